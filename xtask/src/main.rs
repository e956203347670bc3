//! `cargo xtask`: project automation (see README.md).
fn main() {
    eprintln!("usage: cargo xtask <test|kobj|lint>");
    std::process::exit(2);
}
