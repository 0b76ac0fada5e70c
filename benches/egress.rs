//! What egress through the host costs (`cargo bench --bench egress`): one GET to a server on
//! loopback made directly by host code, against the same GET made by the `http-get` tool through
//! the hook (rules, address screening, connect to the checked address, recording off), and
//! against a trivial warm call for scale.

use guild_runtime::egress::EgressRule;
use guild_runtime::{Grants, Limits, Outcome, Runtime, RuntimeConfig};
use guild_test_artifacts::{ECHO, HTTP_GET};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::{Duration, Instant};

const CALLS: usize = 500;

fn serve(listener: TcpListener) {
    for stream in listener.incoming().flatten() {
        std::thread::spawn(move || {
            let mut reader = BufReader::new(stream.try_clone().expect("clone"));
            let mut line = String::new();
            while reader.read_line(&mut line).unwrap_or(0) > 0 && line != "\r\n" {
                line.clear();
            }
            let body = r#"{"ok":true}"#;
            let mut stream = stream;
            let _ =
                write!(stream, "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}", body.len());
        });
    }
}

fn direct(port: u16) {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    write!(stream, "GET /json HTTP/1.1\r\nhost: 127.0.0.1:{port}\r\nconnection: close\r\n\r\n").expect("write");
    let mut response = Vec::new();
    stream.read_to_end(&mut response).expect("read");
    assert!(response.starts_with(b"HTTP/1.1 200"));
}

fn median(mut samples: Vec<Duration>) -> Duration {
    samples.sort();
    samples[samples.len() / 2]
}

fn us(d: Duration) -> String {
    format!("{:.1} µs", d.as_secs_f64() * 1e6)
}

fn main() {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    std::thread::spawn(move || serve(listener));
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("tokio");
    rt.block_on(async {
        let runtime = Runtime::new(RuntimeConfig::default()).expect("runtime");
        let (http_get, _) = runtime.load_file(HTTP_GET.as_ref()).await.expect("load");
        let (echo, _) = runtime.load_file(ECHO.as_ref()).await.expect("load");
        let grants = Grants {
            egress: vec![EgressRule::parse(&format!("http://127.0.0.1:{port}")).expect("rule")],
            ..Grants::default()
        };
        let input = format!(r#"{{"url":"http://127.0.0.1:{port}/json"}}"#);
        let (mut direct_samples, mut hooked, mut warm) = (Vec::new(), Vec::new(), Vec::new());
        for _ in 0..CALLS {
            let started = Instant::now();
            direct(port);
            direct_samples.push(started.elapsed());
            let started = Instant::now();
            let report = runtime.run(&http_get, &input, &grants, &Limits::default()).await.expect("run");
            hooked.push(started.elapsed());
            assert!(matches!(report.outcome, Outcome::Output { .. }), "{:?}", report.outcome);
            let started = Instant::now();
            runtime.run(&echo, r#"{"message":"x"}"#, &Grants::default(), &Limits::default()).await.expect("run");
            warm.push(started.elapsed());
        }
        let (direct_p50, hooked_p50, warm_p50) = (median(direct_samples), median(hooked), median(warm));
        println!("| measurement | result |");
        println!("|---|---|");
        println!("| GET on loopback, made directly by host code, p50 of {CALLS} | {} |", us(direct_p50));
        println!("| the same GET by the http-get tool through the egress hook, whole run, p50 | {} |", us(hooked_p50));
        println!("| a trivial warm call (echo), p50 | {} |", us(warm_p50));
        println!(
            "| hook and guest HTTP stack over the direct request, less the warm call | {} |",
            us(hooked_p50.saturating_sub(direct_p50).saturating_sub(warm_p50))
        );
    });
}
