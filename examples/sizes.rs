//! Prints the sizes that make up corecast's memory per idle connection (the connection
//! task's future, the glommio stream, the `Conn` state), to check changes against the
//! idle-RSS budget. Run: `cargo run --release --example sizes`.

use std::{mem::size_of, rc::Rc};

use corecast::{conn::Conn, shard::Shard};
use glommio::net::TcpStream;

fn future_size<F, Fut>(_: F) -> usize
where
    F: Fn(Rc<Shard>, TcpStream) -> Fut,
{
    size_of::<Fut>()
}

fn main() {
    println!("connection task future (conn::run): {} bytes", future_size(corecast::conn::run));
    println!("glommio TcpStream:                  {} bytes", size_of::<TcpStream>());
    println!("Conn (in an Rc):                    {} bytes", size_of::<Conn>());
    println!(
        "  OutQueue:                         {} bytes",
        size_of::<corecast::conn::writer::OutQueue>()
    );
    println!(
        "  Inbound:                          {} bytes",
        size_of::<corecast::conn::reader::Inbound>()
    );
}
