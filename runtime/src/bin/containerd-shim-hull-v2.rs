fn main() {
    std::process::exit(hull::shim::main());
}
