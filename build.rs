//! Turns the API document, `docs/openapi.yaml`, into the JSON the daemon
//! serves at `GET /v1/openapi.json`: one source for readers and for the
//! server, checked as YAML at every build.

use std::path::Path;

fn main() {
    let source = Path::new("docs/openapi.yaml");
    println!("cargo:rerun-if-changed={}", source.display());
    let text = std::fs::read_to_string(source).expect("docs/openapi.yaml is readable");
    let document: serde_json::Value =
        serde_yaml_ng::from_str(&text).expect("docs/openapi.yaml is valid YAML");
    let json = serde_json::to_string(&document).expect("the document is JSON");
    let out =
        Path::new(&std::env::var("OUT_DIR").expect("cargo sets OUT_DIR")).join("openapi.json");
    std::fs::write(out, json).expect("OUT_DIR is writable");
}
