//! The checked-in C header must be what cbindgen makes of the current sources.

use std::path::Path;

#[test]
fn header_is_current() {
    let crate_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    let header_path = crate_dir.join("../include/combo_packet.h");
    let config = cbindgen::Config::from_file(crate_dir.join("cbindgen.toml"))
        .expect("ffi/cbindgen.toml must parse");
    let bindings = cbindgen::Builder::new()
        .with_crate(crate_dir)
        .with_config(config)
        .generate()
        .expect("cbindgen must understand ffi/src");
    let mut generated = Vec::new();
    bindings.write(&mut generated);
    let generated = String::from_utf8(generated).expect("header is UTF-8");

    if std::env::var_os("COMBO_UPDATE_HEADER").is_some() {
        std::fs::write(&header_path, &generated).expect("write include/combo_packet.h");
        return;
    }
    let committed = std::fs::read_to_string(&header_path).unwrap_or_default();
    assert!(
        committed == generated,
        "include/combo_packet.h is stale; regenerate it with\n  \
         COMBO_UPDATE_HEADER=1 cargo test -p combo-ffi --test header"
    );
}
