//! `cargo xtask`: project automation (see README.md).
mod nested;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("nested") => nested::main(&args[1..]),
        _ => Err("usage: cargo xtask <test|kobj|lint|nested>".to_string()),
    };
    if let Err(e) = result {
        eprintln!("xtask: {e}");
        std::process::exit(1);
    }
}
