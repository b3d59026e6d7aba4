//! Compile-fail (and one compile-pass) tests for the derive macros, `#[handler]`, and the
//! command/event split of `send`/`publish`. Each `ui/*.rs` case must produce exactly the one
//! error recorded in its `.stderr`, pointing at the user's offending token.
//!
//! Regenerate the expected output with
//! `TRYBUILD=overwrite cargo test -p bus-tests --test compile_fail`, then review every `.stderr`.

#[test]
fn ui() {
    let t = trybuild::TestCases::new();
    t.pass("ui/pass/handler_shapes.rs");
    t.compile_fail("ui/*.rs");
}
