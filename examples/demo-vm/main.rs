//! The demo VM as an example (the tests and benchmarks run this binary):
//! the same code as `vmem-gdbstub demo`.
//!
//! ```sh
//! cargo run --release --example demo-vm
//! gdb -ex "target remote :9001"
//! ```

#[path = "../../src/bin/vmem-gdbstub/demo/mod.rs"]
mod demo;

fn main() {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info"))
        .format_timestamp_micros()
        .init();
    demo::main_with(std::env::args_os());
}
