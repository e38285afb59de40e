// `sqlx::migrate!` embeds migrations/ at compile time; without this, adding a
// migration (no Rust file touched) leaves a binary that does not know it.
fn main() {
    println!("cargo:rerun-if-changed=migrations");
}
