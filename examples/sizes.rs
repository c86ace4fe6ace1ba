//! Prints the sizes that make up corecast's memory per idle connection (the connection
//! task's future, the glommio stream, the `Conn` state), to check changes against the
//! idle-RSS budget. Run: `cargo run --release --example sizes`.

fn main() {
    for (what, bytes) in corecast::testing::idle_connection_sizes() {
        println!("{what:48} {bytes:>5} bytes");
    }
}
