fn main() {
    println!("ciak {}", env!("CARGO_PKG_VERSION"));
}
