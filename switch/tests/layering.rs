//! The frame path's layering (docs/architecture.md): each file of `switch/src/` may import
//! only from its own layer or the layers below it, so the path reads as one straight walk
//! and no part of it knows what sits on top of it.

use std::collections::BTreeMap;
use std::path::Path;

/// Layers from the bottom. A module not listed is a failure (place it when adding it).
const LAYERS: &[&[&str]] = &[
    &[
        "wire",
        "vlan",
        "mac_table",
        "virtio",
        "offload",
        "port_security",
        "conntrack",
        "rate_limit",
        "prehash",
        "prefetch",
    ],
    &["port"],
    &["frame"],
    &["flow"],
    &["dataplane"],
    &["tunnel", "host_port", "worker"],
    &["evpn"],
    &["switch"],
    &[
        "control", "metrics", "config", "daemon", "state", "takeover", "lib", "main",
    ],
];

fn layer_of(module: &str) -> Option<usize> {
    LAYERS.iter().position(|l| l.contains(&module))
}

/// `port/backend.rs` -> `port`, `switch.rs` -> `switch`.
fn module_of(path: &Path, src: &Path) -> String {
    let rel = path.strip_prefix(src).expect("under src");
    let first = rel.components().next().expect("a component");
    first
        .as_os_str()
        .to_string_lossy()
        .trim_end_matches(".rs")
        .to_string()
}

fn rust_files(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("read src") {
        let path = entry.expect("entry").path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

#[test]
fn no_file_imports_from_a_layer_above_its_own() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let mut violations: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for file in &files {
        let module = module_of(file, &src);
        let own = layer_of(&module)
            .unwrap_or_else(|| panic!("module `{module}` has no layer in this test"));
        let text = std::fs::read_to_string(file).expect("read");
        for (at, _) in text.match_indices("crate::") {
            let rest = &text[at + "crate::".len()..];
            let target: String = rest
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            if target.is_empty() || target == module {
                continue;
            }
            let Some(theirs) = layer_of(&target) else {
                continue; // a re-exported item at the crate root, not a module
            };
            if theirs > own {
                violations
                    .entry(file.strip_prefix(&src).unwrap().display().to_string())
                    .or_default()
                    .push(target);
            }
        }
    }
    assert!(
        violations.is_empty(),
        "files importing from a layer above their own: {violations:?}"
    );
}

/// Files of `virtio/` from the bottom: the ring walks descriptors over the memory map, the
/// chains are built on the ring's walk, and nothing below imports what sits above it (the
/// ring once took its error type from the chains: a circle).
const VIRTIO_FILES: &[&[&str]] = &[
    &["features", "net_header", "dirty_log", "guest_map"],
    &["ring"],
    &["chain"],
    &["mod"],
];

#[test]
fn no_virtio_file_imports_from_a_file_above_it() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/virtio");
    let level = |name: &str| VIRTIO_FILES.iter().position(|l| l.contains(&name));
    let mut violations = Vec::new();
    let mut files = Vec::new();
    rust_files(&dir, &mut files);
    for file in &files {
        let name = file
            .file_stem()
            .expect("a name")
            .to_string_lossy()
            .to_string();
        let own =
            level(&name).unwrap_or_else(|| panic!("virtio/{name}.rs has no level in this test"));
        let text = std::fs::read_to_string(file).expect("read");
        // Unit tests may build on anything.
        let code = text.split("#[cfg(test)]").next().unwrap_or(&text);
        for prefix in ["super::", "crate::virtio::"] {
            for (at, _) in code.match_indices(prefix) {
                let target: String = code[at + prefix.len()..]
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                if let Some(theirs) = level(&target) {
                    if theirs > own {
                        violations.push(format!("virtio/{name}.rs imports {target}"));
                    }
                }
            }
        }
    }
    assert!(
        violations.is_empty(),
        "virtio files importing from above: {violations:?}"
    );
}
