//! What `GET /metrics` reports, in the Prometheus text format (through `prometheus-client`, the
//! Prometheus project's own Rust client).

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub endpoint: String,
    pub status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabels {
    /// `client` (4xx), `busy` (429), `server` (5xx).
    pub kind: String,
}

/// The server's counters; cheap to update from any thread.
pub struct ServeMetrics {
    registry: Registry,
    pub requests: Family<RequestLabels, Counter>,
    pub errors: Family<ErrorLabels, Counter>,
    /// Seconds from a request's arrival to its answer (model endpoints).
    pub latency: Histogram,
    /// Inputs decoded together.
    pub batch_size: Histogram,
    /// Requests queued or being decoded.
    pub queue_depth: Gauge,
    pub generated_outputs: Counter,
}

impl Default for ServeMetrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("p2m");
        let requests = Family::<RequestLabels, Counter>::default();
        registry.register("requests", "HTTP requests by endpoint and status", requests.clone());
        let errors = Family::<ErrorLabels, Counter>::default();
        registry.register("errors", "Answers that were not 2xx, by kind", errors.clone());
        let latency = Histogram::new(exponential_buckets(0.005, 2.0, 14));
        registry.register(
            "request_duration_seconds",
            "Time from arrival to answer of model requests",
            latency.clone(),
        );
        let batch_size = Histogram::new(exponential_buckets(1.0, 2.0, 8));
        registry.register("batch_size", "Inputs decoded together", batch_size.clone());
        let queue_depth = Gauge::default();
        registry.register("queue_depth", "Requests queued or being decoded", queue_depth.clone());
        let generated_outputs = Counter::default();
        registry.register("outputs", "Outputs generated", generated_outputs.clone());
        ServeMetrics {
            registry,
            requests,
            errors,
            latency,
            batch_size,
            queue_depth,
            generated_outputs,
        }
    }
}

impl ServeMetrics {
    /// Count one answered request.
    pub fn record(&self, endpoint: &str, status: u16) {
        self.requests
            .get_or_create(&RequestLabels { endpoint: endpoint.to_string(), status })
            .inc();
        let kind = match status {
            429 => "busy",
            400..=499 => "client",
            500..=599 => "server",
            _ => return,
        };
        self.errors.get_or_create(&ErrorLabels { kind: kind.to_string() }).inc();
    }

    /// The text exposition.
    pub fn render(&self) -> String {
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &self.registry)
            .expect("writing to a String does not fail");
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_histograms_and_the_gauge() {
        let m = ServeMetrics::default();
        m.record("/v1/predict", 200);
        m.record("/v1/predict", 429);
        m.latency.observe(0.02);
        m.batch_size.observe(3.0);
        m.queue_depth.set(2);
        let text = m.render();
        for needle in [
            "p2m_requests_total{endpoint=\"/v1/predict\",status=\"200\"} 1",
            "p2m_errors_total{kind=\"busy\"} 1",
            "p2m_request_duration_seconds_count 1",
            "p2m_batch_size_sum 3.0",
            "p2m_queue_depth 2",
        ] {
            assert!(text.contains(needle), "{needle} in\n{text}");
        }
    }
}
