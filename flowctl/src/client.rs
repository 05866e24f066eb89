//! One connection to the switch's control socket: newline-delimited JSON, one request and one
//! response per line, several requests per connection.

use std::io::{BufRead, BufReader, ErrorKind, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use patchbay_switch::control::protocol::{
    Request, RequestEnvelope, Response, MAX_REQUEST_LEN, PROTOCOL_VERSION,
};
use serde::de::DeserializeOwned;

/// Longest response line accepted. Responses are not bounded by the protocol (a full MAC
/// table is a few hundred KiB); this only stops a runaway peer.
const MAX_RESPONSE_LEN: u64 = 64 * 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error(
        "cannot connect to switch at {path}: {source} \
         (is patchbay-switch running? use --socket or PATCHBAY_CONTROL)"
    )]
    Connect {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{0}")]
    Input(String),
    #[error("no response from switch at {path} within {secs} s (raise --timeout?)")]
    Timeout { path: PathBuf, secs: f64 },
    #[error("lost connection to switch at {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("switch at {path} closed the connection without answering")]
    Closed { path: PathBuf },
    #[error("switch at {path} sent a response flowctl does not understand: {message}")]
    BadResponse { path: PathBuf, message: String },
    /// The switch understood the request and refused it; the text is the switch's.
    #[error("{0}")]
    Switch(String),
    #[error(
        "the request is {len} bytes, over the control socket's limit of {limit} \
         (about a thousand flows): {advice}"
    )]
    TooLong {
        len: usize,
        limit: usize,
        advice: &'static str,
    },
}

impl ClientError {
    /// flowctl's exit status for this error: 3 when the switch could not be reached, else 1.
    pub fn exit_code(&self) -> u8 {
        match self {
            ClientError::Connect { .. } => 3,
            _ => 1,
        }
    }
}

pub struct Client {
    path: PathBuf,
    timeout: Duration,
    reader: BufReader<UnixStream>,
    writer: UnixStream,
}

impl Client {
    /// Connects to the control socket at `path`; every later read and write waits at most
    /// `timeout`.
    pub fn connect(path: &Path, timeout: Duration) -> Result<Client, ClientError> {
        let connect_err = |source| ClientError::Connect {
            path: path.to_path_buf(),
            source,
        };
        let stream = UnixStream::connect(path).map_err(connect_err)?;
        stream
            .set_read_timeout(Some(timeout))
            .and_then(|()| stream.set_write_timeout(Some(timeout)))
            .map_err(connect_err)?;
        let writer = stream.try_clone().map_err(connect_err)?;
        Ok(Client {
            path: path.to_path_buf(),
            timeout,
            reader: BufReader::new(stream),
            writer,
        })
    }

    fn io_error(&self, source: std::io::Error) -> ClientError {
        match source.kind() {
            ErrorKind::WouldBlock | ErrorKind::TimedOut => ClientError::Timeout {
                path: self.path.clone(),
                secs: self.timeout.as_secs_f64(),
            },
            _ => ClientError::Io {
                path: self.path.clone(),
                source,
            },
        }
    }

    fn bad_response(&self, message: impl Into<String>) -> ClientError {
        ClientError::BadResponse {
            path: self.path.clone(),
            message: message.into(),
        }
    }

    /// Sends one request and returns the response's `result` (`null` when absent).
    pub fn call(&mut self, request: Request) -> Result<serde_json::Value, ClientError> {
        let envelope = RequestEnvelope {
            version: PROTOCOL_VERSION,
            request,
        };
        // Plain structs of strings and numbers: encoding cannot fail.
        let mut line = serde_json::to_string(&envelope).expect("requests always encode");
        line.push('\n');
        // The switch refuses longer requests and hangs up; say why here rather than report
        // the broken pipe the write would meet.
        if line.len() > MAX_REQUEST_LEN {
            // Parts of a replace would each replace the part before.
            let advice = if matches!(envelope.request, Request::ReplaceFlows { .. }) {
                "replace-flows takes its whole set in one request; for a larger set, \
                 del-flows then add-flows in parts (not atomic)"
            } else {
                "split the file and send it in several requests"
            };
            return Err(ClientError::TooLong {
                len: line.len(),
                limit: MAX_REQUEST_LEN,
                advice,
            });
        }
        if let Err(e) = self
            .writer
            .write_all(line.as_bytes())
            .and_then(|()| self.writer.flush())
        {
            return Err(self.io_error(e));
        }

        let mut buf = Vec::new();
        let n = match (&mut self.reader)
            .take(MAX_RESPONSE_LEN + 1)
            .read_until(b'\n', &mut buf)
        {
            Ok(n) => n,
            Err(e) => return Err(self.io_error(e)),
        };
        if n == 0 {
            return Err(ClientError::Closed {
                path: self.path.clone(),
            });
        }
        if n as u64 > MAX_RESPONSE_LEN {
            return Err(self.bad_response(format!("longer than {MAX_RESPONSE_LEN} bytes")));
        }
        let response: Response =
            serde_json::from_slice(&buf).map_err(|e| self.bad_response(e.to_string()))?;
        if response.ok {
            Ok(response.result.unwrap_or(serde_json::Value::Null))
        } else {
            Err(ClientError::Switch(response.error.unwrap_or_else(|| {
                "the switch refused the request without saying why".into()
            })))
        }
    }

    /// Sends one request and decodes its `result` as `T`.
    pub fn call_as<T: DeserializeOwned>(&mut self, request: Request) -> Result<T, ClientError> {
        let value = self.call(request)?;
        serde_json::from_value(value).map_err(|e| self.bad_response(e.to_string()))
    }
}
