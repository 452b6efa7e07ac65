//! The standard `process_*` metrics, with CPU time in fractions of a second.
//!
//! The `prometheus` crate's process collector keeps `process_cpu_seconds_total` as an
//! integer counter: whole seconds. A sidecar that uses 2 % of a core then moves it once
//! every 50 s, so `rate()` over a few minutes reads 0 or a step, and the dashboard's
//! CPU panel is useless for exactly the process it watches. This wraps that collector
//! (memory, file descriptors, threads and start time are left as it makes them) and
//! replaces the one family with a float counter read from the same `/proc` figures.

use std::sync::Mutex;

use prometheus::core::{Collector, Desc};
use prometheus::process_collector::ProcessCollector;
use prometheus::{proto, Counter, Opts};

const CPU_SECONDS: &str = "process_cpu_seconds_total";

pub(super) struct ProcessMetrics {
    inner: ProcessCollector,
    cpu_seconds: Counter,
    /// Held from reading the counter to adding to it: two scrapes at once (a pair of
    /// Prometheus servers) would otherwise both add the same difference.
    reading: Mutex<()>,
    descs: Vec<Desc>,
}

impl ProcessMetrics {
    pub(super) fn for_self() -> ProcessMetrics {
        let inner = ProcessCollector::for_self();
        let cpu_seconds = Counter::with_opts(Opts::new(
            CPU_SECONDS,
            "Total user and system CPU time spent in seconds.",
        ))
        .expect("valid metric");
        let descs = inner
            .desc()
            .into_iter()
            .filter(|desc| desc.fq_name != CPU_SECONDS)
            .chain(cpu_seconds.desc())
            .cloned()
            .collect();
        ProcessMetrics {
            inner,
            cpu_seconds,
            reading: Mutex::new(()),
            descs,
        }
    }

    /// Brings the counter up to the CPU time `/proc/self/stat` gives now.
    fn read_cpu(&self) {
        let Ok(stat) = procfs::process::Process::myself().and_then(|p| p.stat()) else {
            return;
        };
        let ticks = procfs::ticks_per_second().max(1) as f64;
        let total = (stat.utime + stat.stime) as f64 / ticks;
        let _reading = self
            .reading
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let behind = total - self.cpu_seconds.get();
        if behind > 0.0 {
            self.cpu_seconds.inc_by(behind);
        }
    }
}

impl Collector for ProcessMetrics {
    fn desc(&self) -> Vec<&Desc> {
        self.descs.iter().collect()
    }

    fn collect(&self) -> Vec<proto::MetricFamily> {
        self.read_cpu();
        let mut families: Vec<proto::MetricFamily> = self
            .inner
            .collect()
            .into_iter()
            .filter(|family| family.name() != CPU_SECONDS)
            .collect();
        families.extend(self.cpu_seconds.collect());
        families
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// After some work, the CPU time is exported with its fraction, and no family
    /// twice.
    #[test]
    fn cpu_seconds_keep_their_fraction() {
        let metrics = ProcessMetrics::for_self();
        let registry = prometheus::Registry::new();
        registry
            .register(Box::new(ProcessMetrics::for_self()))
            .expect("one family each");
        // Spin until the process has used some CPU that is not a whole second.
        let mut seconds: f64 = 0.0;
        for _ in 0..1_000 {
            let mut x = 0u64;
            for i in 0..1_000_000u64 {
                x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(i));
            }
            let families = metrics.collect();
            let cpu = families
                .iter()
                .find(|f| f.name() == CPU_SECONDS)
                .expect("the CPU family");
            seconds = cpu.get_metric()[0].get_counter().get_value();
            if seconds.fract() != 0.0 {
                break;
            }
        }
        assert!(seconds > 0.0 && seconds.fract() != 0.0, "{seconds}");
        let names: Vec<String> = registry
            .gather()
            .iter()
            .map(|f| f.name().to_owned())
            .collect();
        assert_eq!(
            names.iter().filter(|n| *n == CPU_SECONDS).count(),
            1,
            "{names:?}"
        );
        assert!(names.iter().any(|n| n == "process_resident_memory_bytes"));
    }
}
