//! Measuring the benchmarks: CPU and memory of processes from /proc, latency tables.
use std::time::Duration;

#[derive(Clone, Copy, Debug, Default)]
pub struct ProcSample {
    pub ticks: u64,
    pub rss_kb: u64,
    pub hwm_kb: u64,
}

pub fn clk_tck() -> f64 {
    // SAFETY: sysconf has no preconditions.
    (unsafe { libc::sysconf(libc::_SC_CLK_TCK) }) as f64
}

/// Fields of /proc/<pid>/stat after the command name: [0] state, [1] ppid, [11] utime,
/// [12] stime.
pub fn stat_fields(pid: u32) -> Option<Vec<String>> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (_, rest) = text.rsplit_once(')')?;
    Some(rest.split_whitespace().map(str::to_owned).collect())
}

pub fn alive(pid: u32) -> bool {
    stat_fields(pid).is_some_and(|f| f.first().is_some_and(|s| s != "Z" && s != "X"))
}

pub fn sample(pid: u32) -> ProcSample {
    let ticks = stat_fields(pid)
        .map(|f| {
            let n = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
            n(11) + n(12)
        })
        .unwrap_or(0);
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let kb = |key: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    ProcSample {
        ticks,
        rss_kb: kb("VmRSS:"),
        hwm_kb: kb("VmHWM:"),
    }
}

pub fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

pub fn ms(d: Duration) -> String {
    format!("{}", d.as_millis())
}

/// `| what | n | p50 | p95 | p99 | max |` in milliseconds.
pub fn latency_row(what: &str, mut v: Vec<Duration>) -> String {
    v.sort();
    format!(
        "| {what} | {} | {} | {} | {} | {} |\n",
        v.len(),
        ms(percentile(&v, 50.0)),
        ms(percentile(&v, 95.0)),
        ms(percentile(&v, 99.0)),
        ms(v.last().copied().unwrap_or_default()),
    )
}

pub const LATENCY_HEADER: &str = "| interval | n | p50 ms | p95 ms | p99 ms | max ms |\n| --- | ---: | ---: | ---: | ---: | ---: |\n";

/// The samples of one metric in a Prometheus / OpenMetrics text exposition: each
/// series' labels (name, value) and value. `name` is the full sample name, e.g.
/// `aws_jit_aws_calls_total`.
pub fn prometheus_samples(text: &str, name: &str) -> Vec<(Vec<(String, String)>, f64)> {
    let mut out = Vec::new();
    for line in text.lines() {
        let Some(rest) = line.strip_prefix(name) else {
            continue;
        };
        let (labels, value) = if let Some(rest) = rest.strip_prefix('{') {
            let Some((labels, value)) = rest.rsplit_once('}') else {
                continue;
            };
            (labels, value)
        } else if rest.starts_with(' ') {
            ("", rest)
        } else {
            // Another metric whose name starts with this one.
            continue;
        };
        let Some(value) = value.split_whitespace().next().and_then(|v| v.parse().ok()) else {
            continue;
        };
        let labels = labels
            .split("\",")
            .filter_map(|pair| pair.split_once("=\""))
            .map(|(k, v)| (k.trim().to_owned(), v.trim_end_matches('"').to_owned()))
            .collect();
        out.push((labels, value));
    }
    out
}

/// The sum of every series of `name` (0 when there is none).
pub fn prometheus_sum(text: &str, name: &str) -> f64 {
    prometheus_samples(text, name).iter().map(|s| s.1).sum()
}

/// A loopback port free right now, for a child process to listen on (the listener is
/// closed before returning, so another process could take it first: the child then
/// fails to bind and says so).
pub fn free_loopback_port() -> std::io::Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(l.local_addr()?.port())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_labelled_and_plain_samples() {
        let text = "# HELP x\naws_jit_aws_calls_total{service=\"SQS\",api=\"ReceiveMessage\"} 12\n\
                    aws_jit_aws_calls_total{service=\"SFN\",api=\"DescribeExecution\"} 3\n\
                    aws_jit_leader 1\naws_jit_leader_extra 5\n# EOF\n";
        let calls = prometheus_samples(text, "aws_jit_aws_calls_total");
        assert_eq!(calls.len(), 2);
        assert_eq!(
            calls[0].0[1],
            ("api".to_owned(), "ReceiveMessage".to_owned())
        );
        assert_eq!(calls[0].1, 12.0);
        assert_eq!(prometheus_sum(text, "aws_jit_leader"), 1.0);
        assert_eq!(prometheus_sum(text, "aws_jit_missing"), 0.0);
    }
}
