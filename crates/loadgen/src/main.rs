//! `handover-loadgen`: an open-loop HTTP/1.1 keep-alive load at a fixed request rate, for comparing
//! balancers' latency *at the same load* (a closed-loop tool such as wrk gives each balancer the
//! load it can take, and hides queueing behind coordinated omission).
//!
//! The rate is spread evenly over `--connections` keep-alive connections; request `i` of
//! connection `k` is due at `start + (k + i·connections) / rate`. Its latency runs from when it
//! was due if the connection was still busy with an earlier answer then (the wait is the
//! balancer's), from when it was sent otherwise (a timer waking late is the generator's). Pacing
//! follows tokio's timer, so requests leave in per-millisecond groups. Prints one JSON object.

mod connection;
mod latency;

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use serde::Serialize;
use tokio::time::Instant;

use connection::{Outcome, Pace};

/// Arguments.
#[derive(Debug, Parser)]
#[command(version, about = "Open-loop HTTP/1.1 keep-alive load at a fixed rate")]
struct Args {
    /// Address of the HTTP listener.
    #[arg(long)]
    target: SocketAddr,
    /// Requests per second, in all.
    #[arg(long, value_parser = positive_rate)]
    rate: f64,
    /// Keep-alive connections the rate is spread over.
    #[arg(long, default_value_t = 32, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    connections: u32,
    /// How long to measure, in seconds.
    #[arg(long, default_value_t = 10.0, value_parser = positive_seconds)]
    seconds: f64,
    /// Load sent before measuring, in seconds (connections opened, pools warm).
    #[arg(long, default_value_t = 1.0, value_parser = non_negative_seconds)]
    warmup: f64,
    /// Request path.
    #[arg(long, default_value = "/")]
    path: String,
    /// A request not answered within this many seconds counts as an error (its connection is
    /// closed and opened again).
    #[arg(long, default_value_t = 5.0, value_parser = positive_seconds)]
    timeout: f64,
}

fn positive_rate(text: &str) -> Result<f64, String> {
    let rate: f64 = text.parse().map_err(|_| format!("{text:?} is not a number"))?;
    if rate.is_finite() && rate > 0.0 {
        Ok(rate)
    } else {
        Err("must be above 0".into())
    }
}

fn positive_seconds(text: &str) -> Result<f64, String> {
    positive_rate(text)
}

fn non_negative_seconds(text: &str) -> Result<f64, String> {
    let seconds: f64 = text.parse().map_err(|_| format!("{text:?} is not a number"))?;
    if seconds.is_finite() && seconds >= 0.0 {
        Ok(seconds)
    } else {
        Err("must be 0 or more".into())
    }
}

/// What is printed.
#[derive(Debug, Serialize)]
struct Report {
    target: SocketAddr,
    connections: u32,
    seconds: f64,
    /// Requests per second asked for.
    rate: f64,
    /// Requests answered per second while measuring.
    achieved_rate: f64,
    /// Requests answered with a 2xx while measuring.
    requests: u64,
    /// Requests that failed or got another status while measuring.
    errors: u64,
    p50_ms: f64,
    p90_ms: f64,
    p99_ms: f64,
    p999_ms: f64,
    max_ms: f64,
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let request = format!("GET {} HTTP/1.1\r\nHost: {}\r\n\r\n", args.path, args.target).into_bytes();
    let start = Instant::now() + Duration::from_millis(50);
    let measure_from = start + Duration::from_secs_f64(args.warmup);
    let end = measure_from + Duration::from_secs_f64(args.seconds);
    let interval = Duration::from_secs_f64(f64::from(args.connections) / args.rate);
    let mut tasks = tokio::task::JoinSet::new();
    for k in 0..args.connections {
        let pace = Pace {
            first: start + Duration::from_secs_f64(f64::from(k) / args.rate),
            interval,
            measure_from,
            end,
            timeout: Duration::from_secs_f64(args.timeout),
        };
        let request = request.clone();
        let target = args.target;
        tasks.spawn(async move { connection::run(target, request, pace).await });
    }
    let mut outcome = Outcome::default();
    while let Some(done) = tasks.join_next().await {
        outcome.merge(done.context("a connection task failed")??);
    }
    let latency = latency::Percentiles::of(&mut outcome.latencies_us);
    let report = Report {
        target: args.target,
        connections: args.connections,
        seconds: args.seconds,
        rate: args.rate,
        achieved_rate: outcome.latencies_us.len() as f64 / args.seconds,
        requests: outcome.latencies_us.len() as u64,
        errors: outcome.errors,
        p50_ms: latency.p50_ms,
        p90_ms: latency.p90_ms,
        p99_ms: latency.p99_ms,
        p999_ms: latency.p999_ms,
        max_ms: latency.max_ms,
    };
    println!("{}", serde_json::to_string(&report)?);
    Ok(())
}
