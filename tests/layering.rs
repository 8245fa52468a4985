//! The crate's layers, checked: imports run one way (see the Layout section of
//! `src/lib.rs`). A lower layer importing a higher one fails this test, naming the
//! file, the line and the rule it breaks.

use std::path::{Path, PathBuf};

/// The layers, lowest first. A module belongs to the first layer one of whose
/// prefixes its path (below `crate::`) starts with.
const LAYERS: &[(&str, &[&str])] = &[
    (
        "core",
        &[
            "config",
            "error",
            "ns",
            "id",
            "time",
            "jid",
            "stanza",
            "policy",
            "expiry::period",
        ],
    ),
    ("store", &["store"]),
    ("query", &["query"]),
    (
        "running archive",
        &[
            "mailbox",
            "writer",
            "checkpoint",
            "compactor",
            "reader",
            "archive",
            "expiry",
        ],
    ),
    ("operations", &["admin"]),
    ("Lua boundary", &["lua_api"]),
];

fn layer_of(module_path: &str) -> Option<usize> {
    LAYERS.iter().position(|(_, prefixes)| {
        prefixes.iter().any(|p| {
            module_path == *p
                || module_path.starts_with(&format!("{p}::"))
                || module_path.starts_with(&format!("{p}/"))
        })
    })
}

/// Whether code in layer `from` may use layer `to`.
fn allowed(from: usize, to: usize) -> Result<(), &'static str> {
    let name = |i: usize| LAYERS[i].0;
    match (name(from), name(to)) {
        // The boundary reaches data only through the archive and the operations.
        ("Lua boundary", "store") => Err("the Lua boundary never reaches the store directly"),
        // Operations sit beside the running archive: they share the store, the query
        // model and expiry's batches, not the live threads.
        ("operations", "running archive") => Ok(()),
        ("running archive", "operations") => Err("the running archive does not use the operations"),
        _ if to <= from => Ok(()),
        _ => Err("a lower layer imports a higher one"),
    }
}

fn sources(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("read src") {
        let path = entry.expect("entry").path();
        if path.is_dir() {
            sources(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// `src/expiry/period.rs` -> `expiry::period`; `src/store/mod.rs` -> `store`.
fn module_of(src: &Path, file: &Path) -> String {
    let rel = file
        .strip_prefix(src)
        .expect("under src")
        .with_extension("");
    let parts: Vec<_> = rel
        .iter()
        .map(|p| p.to_string_lossy().into_owned())
        .filter(|p| p != "mod")
        .collect();
    parts.join("::")
}

/// Every `crate::a::b` path named in code (not comments) before the file's tests.
fn crate_paths(code: &str) -> Vec<(usize, String)> {
    let mut found = Vec::new();
    for (n, line) in code.lines().enumerate() {
        let trimmed = line.trim_start();
        if trimmed.starts_with("#[cfg(test)]") {
            break;
        }
        if trimmed.starts_with("//") {
            continue;
        }
        let mut rest = line;
        while let Some(i) = rest.find("crate::") {
            let after = &rest[i + "crate::".len()..];
            let path: String = after
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_' || *c == ':')
                .collect();
            found.push((n + 1, path.trim_end_matches(':').to_owned()));
            rest = after;
        }
        // `use crate::{a, b::c}` groups.
        if let Some(i) = line.find("crate::{") {
            for item in line[i + "crate::{".len()..].split([',', '}']) {
                let item = item.trim();
                if !item.is_empty() {
                    found.push((n + 1, item.to_owned()));
                }
            }
        }
    }
    found
}

#[test]
fn imports_run_one_way_from_the_lua_boundary_down_to_core() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    sources(&src, &mut files);
    let mut broken = Vec::new();
    let mut classified = 0;
    for file in &files {
        let module = module_of(&src, file);
        if module == "lib" {
            continue;
        }
        let Some(from) = layer_of(&module) else {
            broken.push(format!(
                "{module}: in no layer; add it to LAYERS and to lib.rs's Layout"
            ));
            continue;
        };
        classified += 1;
        let code = std::fs::read_to_string(file).expect("read");
        for (line, path) in crate_paths(&code) {
            let Some(to) = layer_of(&path) else {
                continue;
            };
            if let Err(rule) = allowed(from, to) {
                broken.push(format!(
                    "src/{}:{line}: {module} ({}) uses crate::{path} ({}): {rule}",
                    file.strip_prefix(&src).expect("under src").display(),
                    LAYERS[from].0,
                    LAYERS[to].0
                ));
            }
        }
    }
    assert!(classified > 20, "only {classified} source files found");
    assert!(broken.is_empty(), "layering broken:\n{}", broken.join("\n"));
}

#[test]
fn the_check_catches_an_upward_import() {
    let code = "use crate::store::Owner;\nuse crate::{config::Config, archive::Archive};\n";
    let paths: Vec<_> = crate_paths(code).into_iter().map(|(_, p)| p).collect();
    assert!(paths.contains(&"store::Owner".to_owned()));
    assert!(paths.contains(&"archive::Archive".to_owned()));
    let core = layer_of("config").unwrap();
    let store = layer_of("store::sqlite").unwrap();
    let boundary = layer_of("lua_api::admin").unwrap();
    assert_eq!(layer_of("expiry::period"), Some(core));
    assert!(allowed(core, store).is_err());
    assert!(allowed(store, core).is_ok());
    assert!(allowed(boundary, store).is_err());
    assert!(allowed(layer_of("writer").unwrap(), layer_of("admin").unwrap()).is_err());
}
