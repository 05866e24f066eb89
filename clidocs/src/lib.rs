//! Man pages and shell completions generated from a binary's own clap definition, so they
//! never drift from `--help`. Each binary calls [`intercept`] first thing in `main`; the
//! package build (`scripts/build-deb.sh`) runs
//!
//! - `BIN --print-man` (a roff man page, section 1, on stdout), and
//! - `BIN --print-completions SHELL` (bash, zsh, fish, elvish or powershell).
//!
//! Neither option shows in `--help`: they are for packagers.

use std::io::Write;
use std::process::ExitCode;

use clap_complete::Shell;

/// Handles `--print-man` / `--print-completions SHELL` as the only arguments; None when the
/// command line is anything else (the binary goes on parsing it as usual).
pub fn intercept(command: impl FnOnce() -> clap::Command) -> Option<ExitCode> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut out = std::io::stdout().lock();
    let result = match args.iter().map(String::as_str).collect::<Vec<_>>()[..] {
        ["--print-man"] => man(command(), &mut out),
        ["--print-completions", shell] => match shell.parse::<Shell>() {
            Ok(shell) => completions(command(), shell, &mut out),
            Err(_) => Err(format!(
                "unknown shell '{shell}' (bash, zsh, fish, elvish, powershell)"
            )),
        },
        _ => return None,
    };
    Some(
        match result.and_then(|()| out.flush().map_err(|e| e.to_string())) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("{e}");
                ExitCode::FAILURE
            }
        },
    )
}

/// The man page of `command` (and of its subcommands, as sections of the same page).
pub fn man(command: clap::Command, out: &mut dyn Write) -> Result<(), String> {
    clap_mangen::Man::new(command)
        .render(out)
        .map_err(|e| format!("cannot write the man page: {e}"))
}

/// The completion script of `command` for `shell`.
pub fn completions(
    mut command: clap::Command,
    shell: Shell,
    out: &mut dyn Write,
) -> Result<(), String> {
    let name = command.get_name().to_string();
    clap_complete::generate(shell, &mut command, name, out);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn demo() -> clap::Command {
        clap::Command::new("demo")
            .about("A demo command")
            .arg(clap::Arg::new("port").long("port").help("Add a port"))
            .subcommand(clap::Command::new("show").about("Show things"))
    }

    #[test]
    fn man_page_has_the_name_options_and_subcommands() {
        let mut out = Vec::new();
        man(demo(), &mut out).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert!(text.contains(".TH demo 1"), "{text}");
        assert!(
            text.contains("A demo command") && text.contains("port"),
            "{text}"
        );
        assert!(text.contains("show"), "{text}");
    }

    #[test]
    fn completions_name_the_options_for_each_shell() {
        for shell in [Shell::Bash, Shell::Zsh, Shell::Fish] {
            let mut out = Vec::new();
            completions(demo(), shell, &mut out).unwrap();
            let text = String::from_utf8(out).unwrap();
            assert!(text.contains("port"), "{shell}: {text}");
            assert!(text.contains("show"), "{shell}: {text}");
        }
    }
}
