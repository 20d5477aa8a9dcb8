//! End to end: wrk against nginx on loopback, untraced / floor / sockspan, plus a constant-rate
//! client (wrk2-style: latency counted from each request's scheduled send time, so a stall is
//! not hidden by the client waiting) at half the untraced saturation rate.

use std::{
    io::{Read as _, Write as _},
    net::TcpStream,
    path::Path,
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

use crate::util::{command_ok, output_of, run};

/// The constant-rate client's own ceiling on these 2 vCPUs, measured untraced against nginx
/// (16 connections): p50 145 µs / p99 446 µs at 40 k req/s, but p99 2 ms at 60 k, where the
/// client itself falls behind. The fixed-load phase never asks more of it.
pub const CLIENT_MAX_RATE: f64 = 40_000.0;

/// The body nginx answers with.
const BODY: &str = "hello from nginx, traced or not\n";

pub fn ensure_installed() -> Result<()> {
    if !command_ok(Command::new("sh").args(["-c", "command -v wrk && command -v nginx"])) {
        run(Command::new("apt-get")
            .args([
                "install",
                "-y",
                "-qq",
                "--no-install-recommends",
                "wrk",
                "nginx-light",
            ])
            .env("DEBIAN_FRONTEND", "noninteractive"))?;
    }
    Ok(())
}

/// nginx serving [`BODY`] (the root tests' nginx, one worker).
pub fn start_nginx() -> sockspan_tests::Nginx {
    sockspan_tests::Nginx::serving(BODY.trim_end())
}

/// wrk's requests/s and total requests at saturation.
pub fn wrk(port: u16, seconds: u64) -> Result<(f64, u64)> {
    wrk_at(&format!("http://127.0.0.1:{port}/"), 1, 32, seconds)
}

/// wrk's requests/s and total requests at saturation of `url`, with `threads` threads and
/// `connections` connections.
pub fn wrk_at(url: &str, threads: u32, connections: u32, seconds: u64) -> Result<(f64, u64)> {
    let text = output_of(
        Command::new("wrk")
            .args([
                format!("-t{threads}"),
                format!("-c{connections}"),
                format!("-d{seconds}s"),
            ])
            .arg(url),
    )?;
    let rate = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("Requests/sec:"))
        .and_then(|v| v.trim().parse().ok())
        .context("wrk printed no Requests/sec")?;
    let total = text
        .lines()
        .find_map(|l| {
            l.trim()
                .split_once(" requests in ")
                .map(|(n, _)| n.trim().parse().ok())
        })
        .flatten()
        .unwrap_or(0);
    Ok((rate, total))
}

/// Reads one HTTP/1.1 response with a Content-Length from `stream`.
fn read_response(stream: &mut TcpStream, buf: &mut Vec<u8>) -> Result<()> {
    buf.clear();
    let mut chunk = [0u8; 4096];
    loop {
        let n = stream.read(&mut chunk)?;
        if n == 0 {
            bail!("connection closed");
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(head_end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
            let length: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0);
            if buf.len() >= head_end + 4 + length {
                return Ok(());
            }
        }
    }
}

/// Requests completed and their latencies (µs, from the scheduled send time) at `rate`
/// requests/s for `seconds`, over 16 keep-alive connections.
pub fn constant_rate(port: u16, rate: f64, seconds: u64) -> Result<(u64, Vec<u64>)> {
    const CONNECTIONS: usize = 16;
    let interval = Duration::from_secs_f64(CONNECTIONS as f64 / rate.max(1.0));
    let duration = Duration::from_secs(seconds);
    let start = Instant::now() + Duration::from_millis(50);
    let workers: Vec<_> = (0..CONNECTIONS)
        .map(|k| {
            std::thread::spawn(move || -> Result<Vec<u64>> {
                let mut stream = TcpStream::connect(("127.0.0.1", port))?;
                stream.set_nodelay(true)?;
                let mut buf = Vec::with_capacity(1024);
                let mut latencies = Vec::new();
                // Stagger the connections across one interval.
                let mut scheduled = start + interval.mul_f64(k as f64 / CONNECTIONS as f64);
                while scheduled < start + duration {
                    if let Some(wait) = scheduled.checked_duration_since(Instant::now()) {
                        std::thread::sleep(wait);
                    }
                    stream.write_all(b"GET / HTTP/1.1\r\nHost: bench\r\n\r\n")?;
                    read_response(&mut stream, &mut buf)?;
                    latencies.push(scheduled.elapsed().as_micros() as u64);
                    scheduled += interval;
                }
                Ok(latencies)
            })
        })
        .collect();
    let mut all = Vec::new();
    for w in workers {
        all.extend(
            w.join()
                .map_err(|_| anyhow::anyhow!("client thread panicked"))??,
        );
    }
    all.sort_unstable();
    Ok((all.len() as u64, all))
}

/// SERVER spans of nginx in a jsonl span file.
pub fn nginx_server_spans(path: &Path) -> u64 {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains("\"kind\":\"SERVER\"") && l.contains("\"service.name\":\"nginx\""))
        .count() as u64
}
