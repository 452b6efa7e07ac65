//! The results table: the client's JSON lines (tagged `scenario`, `target`, `round`) ->
//! markdown, one table per scenario with the median of each metric over the rounds, the
//! issue's targets as ratios from the same run, and every run's raw numbers.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::fs;
use std::path::PathBuf;

use crate::json::{self, Value};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The client JSON lines (other lines are skipped).
    #[arg(long)]
    input: PathBuf,
    /// Write the markdown here as well as to stdout.
    #[arg(long)]
    output: Option<PathBuf>,
    /// The document's title.
    #[arg(long, default_value = "sse-gateway load benchmark")]
    title: String,
    /// A line for the conditions list (repeatable).
    #[arg(long = "note")]
    notes: Vec<String>,
    /// TARGET=NAME: how a target's rows are named (repeatable), such as
    /// `gateway=sse-gateway 1a2b3c`.
    #[arg(long = "name")]
    names: Vec<String>,
}

type Run = BTreeMap<String, Value>;

const TARGETS: [(&str, &str); 5] = [
    ("direct", "direct (no proxy)"),
    ("nginx", "NGINX"),
    ("haproxy", "HAProxy"),
    ("baseline", "sse-gateway baseline"),
    ("gateway", "sse-gateway"),
];

pub fn run(args: Args) -> Result<(), String> {
    let text = fs::read_to_string(&args.input)
        .map_err(|e| format!("cannot read {}: {e}", args.input.display()))?;
    let runs: Vec<Run> = text
        .lines()
        .filter(|l| l.trim_start().starts_with('{'))
        .map(json::parse)
        .collect::<Result<_, _>>()?;
    let markdown = render(&args, &runs);
    print!("{markdown}");
    if let Some(path) = &args.output {
        fs::write(path, &markdown).map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    }
    Ok(())
}

fn tag(run: &Run, key: &str) -> String {
    run.get(key).map(Value::text).unwrap_or_default()
}

/// Median of `key` over the runs of one scenario and target that have it.
fn median(runs: &[&Run], key: &str) -> Option<f64> {
    let mut values: Vec<f64> = runs.iter().filter_map(|r| r.get(key)?.num()).collect();
    if values.is_empty() {
        return None;
    }
    values.sort_by(|a, b| a.total_cmp(b));
    let n = values.len();
    Some(if n % 2 == 1 {
        values[n / 2]
    } else {
        (values[n / 2 - 1] + values[n / 2]) / 2.0
    })
}

fn sum(runs: &[&Run], key: &str) -> Option<f64> {
    let values: Vec<f64> = runs.iter().filter_map(|r| r.get(key)?.num()).collect();
    (!values.is_empty()).then(|| values.iter().sum())
}

fn fmt(value: Option<f64>, decimals: usize) -> String {
    match value {
        Some(v) if v.is_finite() => format!("{v:.decimals$}"),
        _ => "—".into(),
    }
}

struct Column {
    head: &'static str,
    key: &'static str,
    scale: f64,
    decimals: usize,
    total: bool,
}

const fn col(head: &'static str, key: &'static str, scale: f64, decimals: usize) -> Column {
    Column {
        head,
        key,
        scale,
        decimals,
        total: false,
    }
}

const FAILURES: Column = Column {
    head: "failures (all rounds)",
    key: "failures",
    scale: 1.0,
    decimals: 0,
    total: true,
};

fn scenario_columns(scenario: &str) -> Vec<Column> {
    match scenario {
        "latency" | "each-paced" => vec![
            col("events/s", "events_per_s", 1.0, 0),
            col("p50 µs", "p50_us", 1.0, 0),
            col("p90 µs", "p90_us", 1.0, 0),
            col("p99 µs", "p99_us", 1.0, 0),
            col("p99.9 µs", "p999_us", 1.0, 0),
            col("max µs", "max_us", 1.0, 0),
            col("proxy CPU % of a core", "proxy_cpu_share", 100.0, 1),
            col("proxy CPU s / M events", "proxy_cpu_s_per_m_events", 1.0, 2),
            col("of it in kernel %", "proxy_kernel_pct", 1.0, 0),
            FAILURES,
        ],
        "throughput" | "each-fast" => vec![
            col("events/s", "events_per_s", 1.0, 0),
            col("MiB/s", "mib_per_s", 1.0, 1),
            col("proxy CPU % of a core", "proxy_cpu_share", 100.0, 1),
            col("proxy CPU s / M events", "proxy_cpu_s_per_m_events", 1.0, 2),
            col("of it in kernel %", "proxy_kernel_pct", 1.0, 0),
            col("p50 µs", "p50_us", 1.0, 0),
            col("p99 µs", "p99_us", 1.0, 0),
            FAILURES,
        ],
        "idle" => vec![
            col("open streams", "connected", 1.0, 0),
            col(
                "proxy RSS before, MiB",
                "proxy_rss_base_kib",
                1.0 / 1024.0,
                1,
            ),
            col("proxy RSS open, MiB", "proxy_rss_end_kib", 1.0 / 1024.0, 1),
            col(
                "RSS growth / open stream, KiB",
                "proxy_rss_per_stream_kib",
                1.0,
                2,
            ),
            col("proxy CPU % of a core", "proxy_cpu_share", 100.0, 2),
            col("p99 µs", "p99_us", 1.0, 0),
            FAILURES,
        ],
        _ => vec![
            col("events/s", "events_per_s", 1.0, 0),
            col("p99 µs", "p99_us", 1.0, 0),
            FAILURES,
        ],
    }
}

fn render(args: &Args, runs: &[Run]) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "# {}\n", args.title);
    for note in &args.notes {
        let _ = writeln!(out, "- {note}");
    }
    if !args.notes.is_empty() {
        out.push('\n');
    }
    let mut scenarios: Vec<String> = Vec::new();
    for run in runs {
        let s = tag(run, "scenario");
        if !scenarios.contains(&s) {
            scenarios.push(s);
        }
    }
    let select = |scenario: &str, target: &str| -> Vec<&Run> {
        runs.iter()
            .filter(|r| tag(r, "scenario") == scenario && tag(r, "target") == target)
            .collect()
    };
    for scenario in &scenarios {
        let desc = runs
            .iter()
            .find(|r| &tag(r, "scenario") == scenario)
            .map(|r| tag(r, "desc"))
            .unwrap_or_default();
        let rounds = runs
            .iter()
            .filter(|r| &tag(r, "scenario") == scenario)
            .map(|r| tag(r, "round"))
            .collect::<std::collections::BTreeSet<_>>()
            .len();
        let _ = writeln!(
            out,
            "## {scenario}: {desc}\n\nMedian of {rounds} round{} per cell.\n",
            if rounds == 1 { "" } else { "s" }
        );
        let mut columns = scenario_columns(scenario);
        // run.sh --syscalls: the proxy's syscalls per event, all of them and its reads
        // and writes
        if runs
            .iter()
            .any(|r| &tag(r, "scenario") == scenario && r.contains_key("syscalls_per_event"))
        {
            columns.extend([
                col("syscalls / event", "syscalls_per_event", 1.0, 2),
                col("reads / event", "syscalls_recvfrom_per_event", 1.0, 2),
                col(
                    "epoll_wait / event",
                    "syscalls_epoll_wait_per_event",
                    1.0,
                    2,
                ),
                col(
                    "context switches / event",
                    "context_switches_per_event",
                    1.0,
                    3,
                ),
            ]);
        }
        out.push_str("| target |");
        for c in &columns {
            let _ = write!(out, " {} |", c.head);
        }
        out.push_str("\n|---|");
        for _ in &columns {
            out.push_str("---:|");
        }
        out.push('\n');
        for (key, default) in TARGETS {
            let name = display(args, key, default);
            let selected = select(scenario, key);
            if selected.is_empty() {
                continue;
            }
            let _ = write!(out, "| {name} |");
            for c in &columns {
                let value = if c.total {
                    sum(&selected, c.key)
                } else {
                    median(&selected, c.key)
                };
                let _ = write!(out, " {} |", fmt(value.map(|v| v * c.scale), c.decimals));
            }
            out.push('\n');
        }
        out.push('\n');
    }
    let gateway = display(args, "gateway", "sse-gateway");
    let baseline = display(args, "baseline", "sse-gateway baseline");
    render_targets(&mut out, &gateway, &baseline, &|s, t| {
        let selected = select(s, t);
        selected.iter().map(|r| (*r).clone()).collect()
    });
    render_raw(&mut out, runs);
    out
}

/// The row name of a target: `--name TARGET=NAME`, else the default.
fn display(args: &Args, key: &str, default: &str) -> String {
    args.names
        .iter()
        .find_map(|n| n.strip_prefix(key)?.strip_prefix('=').map(str::to_owned))
        .unwrap_or_else(|| default.to_owned())
}

fn render_targets(
    out: &mut String,
    gateway: &str,
    baseline: &str,
    select: &dyn Fn(&str, &str) -> Vec<Run>,
) {
    let m = |scenario: &str, target: &str, key: &str| {
        let runs = select(scenario, target);
        let refs: Vec<&Run> = runs.iter().collect();
        median(&refs, key)
    };
    let has_baseline = !select("throughput", "baseline").is_empty()
        || !select("latency", "baseline").is_empty()
        || !select("idle", "baseline").is_empty();
    let targets: Vec<(&str, &str)> = if has_baseline {
        vec![("gateway", gateway), ("baseline", baseline)]
    } else {
        vec![("gateway", gateway)]
    };
    out.push_str("## Targets (ratios from this run)\n\n| target | measured | limit | verdict |\n|---|---|---|---|\n");
    for (key, name) in targets {
        render_target_rows(out, &m, key, name);
    }
    out.push('\n');
}

fn render_target_rows(
    out: &mut String,
    m: &dyn Fn(&str, &str, &str) -> Option<f64>,
    key: &str,
    name: &str,
) {
    let ratio = |a: Option<f64>, b: Option<f64>| match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => Some(a / b),
        _ => None,
    };
    let verdict = |value: Option<f64>, ok: &dyn Fn(f64) -> bool| match value {
        Some(v) if v.is_finite() => {
            if ok(v) {
                "met"
            } else {
                "**missed**"
            }
        }
        _ => "not measured",
    };
    let gw_cpu = m("throughput", key, "proxy_cpu_s_per_m_events");
    let ng_cpu = m("throughput", "nginx", "proxy_cpu_s_per_m_events");
    let gw_p99 = m("latency", key, "p99_us");
    let direct_p99 = m("latency", "direct", "p99_us");
    let ng_p99 = m("latency", "nginx", "p99_us");
    let ha_p99 = m("latency", "haproxy", "p99_us");
    let gw_rss = m("idle", key, "proxy_rss_per_stream_kib");
    let rows: Vec<(String, String, &str, &str)> = vec![
        {
            let r = ratio(gw_cpu, ng_cpu);
            (
                format!("proxy CPU per million events (throughput), {name} ÷ NGINX"),
                format!("{} ({} ÷ {} s)", x(r), fmt(gw_cpu, 2), fmt(ng_cpu, 2)),
                "≤ 0.8x",
                verdict(r, &|v| v <= 0.8),
            )
        },
        {
            let r = ratio(gw_p99, direct_p99);
            (
                format!("p99 latency (latency), {name} ÷ direct"),
                format!("{} ({} ÷ {} µs)", x(r), fmt(gw_p99, 0), fmt(direct_p99, 0)),
                "≤ 1.5x",
                verdict(r, &|v| v <= 1.5),
            )
        },
        {
            let r = ratio(gw_p99, ng_p99);
            (
                format!("p99 latency (latency), {name} ÷ NGINX"),
                format!("{} ({} ÷ {} µs)", x(r), fmt(gw_p99, 0), fmt(ng_p99, 0)),
                "< 1.0x",
                verdict(r, &|v| v < 1.0),
            )
        },
        {
            let r = ratio(gw_p99, ha_p99);
            (
                format!("p99 latency (latency), {name} ÷ HAProxy"),
                format!("{} ({} ÷ {} µs)", x(r), fmt(gw_p99, 0), fmt(ha_p99, 0)),
                "< 1.0x",
                verdict(r, &|v| v < 1.0),
            )
        },
        (
            format!("RSS growth per idle open stream (idle), {name}"),
            format!(
                "{} KiB (NGINX {}, HAProxy {})",
                fmt(gw_rss, 2),
                fmt(m("idle", "nginx", "proxy_rss_per_stream_kib"), 2),
                fmt(m("idle", "haproxy", "proxy_rss_per_stream_kib"), 2)
            ),
            "≤ 4 KiB",
            verdict(gw_rss, &|v| v <= 4.0),
        ),
    ];
    for (name, measured, limit, verdict) in rows {
        let _ = writeln!(out, "| {name} | {measured} | {limit} | {verdict} |");
    }
}

fn x(ratio: Option<f64>) -> String {
    match ratio {
        Some(r) if r.is_finite() => format!("{r:.2}x"),
        _ => "—".into(),
    }
}

fn render_raw(out: &mut String, runs: &[Run]) {
    out.push_str("## Every run\n\n");
    out.push_str("| scenario | round | target | events/s | p50 µs | p99 µs | p99.9 µs | proxy CPU s / M events | RSS / stream KiB | proxy threads | failures | other load before / during, cores |\n");
    out.push_str("|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n");
    for run in runs {
        let n = |key: &str, decimals: usize| fmt(run.get(key).and_then(Value::num), decimals);
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} / {} |",
            tag(run, "scenario"),
            tag(run, "round"),
            tag(run, "target"),
            n("events_per_s", 0),
            n("p50_us", 0),
            n("p99_us", 0),
            n("p999_us", 0),
            n("proxy_cpu_s_per_m_events", 2),
            n("proxy_rss_per_stream_kib", 2),
            n("proxy_threads", 0),
            n("failures", 0),
            n("bg_cores", 2),
            n("other_cores", 2),
        );
    }
    out.push('\n');
}
