//! The documentation says what the program does: the license is declared.
use std::fs;
use std::path::{Path, PathBuf};

fn repo(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)
}

fn readme() -> String {
    fs::read_to_string(repo("README.md")).unwrap()
}

// ---- license ----

#[test]
fn license_is_mit_or_apache_2() {
    assert_eq!(env!("CARGO_PKG_LICENSE"), "MIT OR Apache-2.0");
    let mit = fs::read_to_string(repo("LICENSE-MIT")).unwrap();
    assert!(mit.contains("Copyright (c) the unionmount developers"));
    assert!(mit.contains("Permission is hereby granted, free of charge"));
    assert!(mit.contains("THE SOFTWARE IS PROVIDED \"AS IS\", WITHOUT WARRANTY OF ANY KIND"));
    let apache = fs::read_to_string(repo("LICENSE-APACHE")).unwrap();
    for s in [
        "Apache License",
        "Version 2.0, January 2004",
        "TERMS AND CONDITIONS FOR USE, REPRODUCTION, AND DISTRIBUTION",
        "9. Accepting Warranty or Additional Liability.",
        "END OF TERMS AND CONDITIONS",
    ] {
        assert!(apache.contains(s), "LICENSE-APACHE lacks {s:?}");
    }
    let readme = readme();
    assert!(readme.contains("[LICENSE-MIT](LICENSE-MIT)") && readme.contains("LICENSE-APACHE"));
}
