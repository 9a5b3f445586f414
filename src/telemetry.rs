//! Logging: `tracing` events to stderr as text or JSON lines, filtered by `RUST_LOG`.
//!
//! Every line of a replica names the replica id and the current Raft term, set with
//! [`set_replica`] and [`set_term`] (process-global; a process runs one replica):
//! ```text
//! 2026-11-26T05:00:00.123Z  INFO replica=1 term=3 scaleout::master: elected leader job_id=5
//! {"timestamp":"2026-11-26T05:00:00.123Z","level":"INFO","target":"scaleout::master","replica":1,"term":3,"message":"elected leader","job_id":5}
//! ```
//! Text lines: timestamp (UTC, milliseconds), level, `replica=`/`term=` once set, target,
//! message, the event's fields, then the fields of the spans the event is in (outermost first).
//! JSON lines: `timestamp`, `level`, `target`, `replica`, `term` (once set), `message`, the
//! event's fields flattened (a field named like one of those keys becomes `fields.<name>`), and
//! `spans`: the enclosing spans, outermost first, each `{"name": ..., <its fields>}`.
//! Records from the `log` crate (sled) show their original target.

use std::fmt;
use std::io::IsTerminal;
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};

use serde_json::{Map, Value};
use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::fmt::format::{FormatEvent, FormatFields, JsonFields, Writer};
use tracing_subscriber::fmt::{FmtContext, FormattedFields, MakeWriter};
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::EnvFilter;

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

impl LogFormat {
    pub fn as_str(self) -> &'static str {
        match self {
            LogFormat::Text => "text",
            LogFormat::Json => "json",
        }
    }
}

impl fmt::Display for LogFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A log format name other than `text` or `json`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown log format `{0}`: expected `text` or `json`")]
pub struct ParseLogFormatError(pub String);

impl FromStr for LogFormat {
    type Err = ParseLogFormatError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "text" => Ok(LogFormat::Text),
            "json" => Ok(LogFormat::Json),
            _ => Err(ParseLogFormatError(s.to_string())),
        }
    }
}

/// Installs the global subscriber writing to stderr, filtered by `RUST_LOG` or else by
/// `default_directive` (e.g. `"info"` or `"scaleout=debug,openraft=info"`). Also routes records
/// of the `log` crate into `tracing`. Does nothing if a global subscriber is already set.
pub fn init(format: LogFormat, default_directive: &str) {
    let ansi = format == LogFormat::Text
        && std::io::stderr().is_terminal()
        && std::env::var_os("NO_COLOR").is_none();
    let subscriber = build(
        format,
        env_filter(default_directive),
        std::io::stderr,
        ansi,
        &GLOBAL,
    );
    let _ = subscriber.try_init();
}

/// A subscriber in `format` writing to `writer` (no colours), filtered by `directive`
/// (`RUST_LOG` syntax; invalid directives fall back to `info`), for tests and harnesses that
/// capture logs, e.g. with `tracing::subscriber::with_default`.
pub fn subscriber<W>(
    format: LogFormat,
    directive: &str,
    writer: W,
) -> Box<dyn Subscriber + Send + Sync>
where
    W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
{
    build(format, parse_filter(directive), writer, false, &GLOBAL)
}

/// Records this process's replica id; every later line names it.
pub fn set_replica(id: u64) {
    GLOBAL.replica.store(id, Ordering::Relaxed);
}

/// Records the current Raft term; every later line names it.
pub fn set_term(term: u64) {
    GLOBAL.term.store(term, Ordering::Relaxed);
}

/// The replica id set with [`set_replica`], if any.
pub fn replica() -> Option<u64> {
    GLOBAL.replica()
}

/// The term set with [`set_term`], if any.
pub fn term() -> Option<u64> {
    GLOBAL.term()
}

const UNSET: u64 = u64::MAX;

/// Where the formatters read the replica id and term.
pub(crate) struct Ids {
    replica: AtomicU64,
    term: AtomicU64,
}

impl Ids {
    pub(crate) const fn new() -> Self {
        Ids {
            replica: AtomicU64::new(UNSET),
            term: AtomicU64::new(UNSET),
        }
    }

    fn replica(&self) -> Option<u64> {
        Some(self.replica.load(Ordering::Relaxed)).filter(|&v| v != UNSET)
    }

    fn term(&self) -> Option<u64> {
        Some(self.term.load(Ordering::Relaxed)).filter(|&v| v != UNSET)
    }
}

static GLOBAL: Ids = Ids::new();

fn env_filter(default_directive: &str) -> EnvFilter {
    match EnvFilter::try_from_default_env() {
        Ok(filter) => filter,
        Err(e) => {
            if let Some(value) = std::env::var_os(EnvFilter::DEFAULT_ENV) {
                eprintln!(
                    "warning: RUST_LOG={} is not a valid filter ({e}); using `{default_directive}`",
                    value.to_string_lossy()
                );
            }
            parse_filter(default_directive)
        }
    }
}

fn parse_filter(directive: &str) -> EnvFilter {
    EnvFilter::try_new(directive).unwrap_or_else(|e| {
        eprintln!("warning: log filter `{directive}` is not valid ({e}); using `info`");
        EnvFilter::new("info")
    })
}

fn build<W>(
    format: LogFormat,
    filter: EnvFilter,
    writer: W,
    ansi: bool,
    ids: &'static Ids,
) -> Box<dyn Subscriber + Send + Sync>
where
    W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
{
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer)
        .with_ansi(ansi);
    match format {
        LogFormat::Text => Box::new(builder.event_format(TextFormat { ids }).finish()),
        LogFormat::Json => Box::new(
            builder
                .fmt_fields(JsonFields::new())
                .event_format(JsonFormat { ids })
                .finish(),
        ),
    }
}

/// The text event formatter (see the module documentation).
pub struct TextFormat {
    ids: &'static Ids,
}

impl Default for TextFormat {
    fn default() -> Self {
        TextFormat { ids: &GLOBAL }
    }
}

impl<S, N> FormatEvent<S, N> for TextFormat
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let meta = event.metadata();
        write!(writer, "{} ", timestamp_now())?;
        let level = meta.level();
        if writer.has_ansi_escapes() {
            let colour = match *level {
                tracing::Level::ERROR => "31",
                tracing::Level::WARN => "33",
                tracing::Level::INFO => "32",
                tracing::Level::DEBUG => "34",
                tracing::Level::TRACE => "35",
            };
            write!(writer, "\x1b[{colour}m{level:>5}\x1b[0m ")?;
        } else {
            write!(writer, "{level:>5} ")?;
        }
        if let Some(replica) = self.ids.replica() {
            write!(writer, "replica={replica} ")?;
        }
        if let Some(term) = self.ids.term() {
            write!(writer, "term={term} ")?;
        }
        match log_target(event) {
            Some(target) => write!(writer, "{target}: ")?,
            None => write!(writer, "{}: ", meta.target())?,
        }
        ctx.field_format().format_fields(writer.by_ref(), event)?;
        if let Some(scope) = ctx.event_scope() {
            for span in scope.from_root() {
                let extensions = span.extensions();
                if let Some(fields) = extensions.get::<FormattedFields<N>>() {
                    if !fields.fields.is_empty() {
                        write!(writer, " {}", fields.fields)?;
                    }
                }
            }
        }
        writeln!(writer)
    }
}

/// The JSON event formatter (see the module documentation). Pair it with
/// [`JsonFields`] as the field formatter so span fields come out structured.
pub struct JsonFormat {
    ids: &'static Ids,
}

impl Default for JsonFormat {
    fn default() -> Self {
        JsonFormat { ids: &GLOBAL }
    }
}

const RESERVED: &[&str] = &[
    "timestamp",
    "level",
    "target",
    "replica",
    "term",
    "message",
    "spans",
];

impl<S, N> FormatEvent<S, N> for JsonFormat
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let meta = event.metadata();
        let mut visitor = JsonVisitor::default();
        event.record(&mut visitor);

        let mut line: Vec<(String, Value)> = vec![
            ("timestamp".into(), Value::String(timestamp_now())),
            ("level".into(), Value::String(meta.level().to_string())),
            (
                "target".into(),
                Value::String(
                    visitor
                        .log_target
                        .take()
                        .unwrap_or_else(|| meta.target().into()),
                ),
            ),
        ];
        if let Some(replica) = self.ids.replica() {
            line.push(("replica".into(), replica.into()));
        }
        if let Some(term) = self.ids.term() {
            line.push(("term".into(), term.into()));
        }
        if let Some(message) = visitor.fields.remove("message") {
            line.push(("message".into(), message));
        }
        for (name, value) in std::mem::take(&mut visitor.fields) {
            let name = if RESERVED.contains(&name.as_str()) {
                format!("fields.{name}")
            } else {
                name
            };
            line.push((name, value));
        }
        if let Some(scope) = ctx.event_scope() {
            let spans: Vec<Value> = scope
                .from_root()
                .map(|span| {
                    let mut object = Map::new();
                    object.insert("name".into(), span.name().into());
                    let extensions = span.extensions();
                    if let Some(fields) = extensions.get::<FormattedFields<N>>() {
                        match serde_json::from_str::<Map<String, Value>>(&fields.fields) {
                            Ok(parsed) => object.extend(parsed),
                            Err(_) if !fields.fields.is_empty() => {
                                object.insert("fields".into(), fields.fields.clone().into());
                            }
                            Err(_) => {}
                        }
                    }
                    Value::Object(object)
                })
                .collect();
            if !spans.is_empty() {
                line.push(("spans".into(), Value::Array(spans)));
            }
        }

        // Written by hand to keep the key order (serde_json's Map sorts keys).
        writer.write_char('{')?;
        for (i, (name, value)) in line.iter().enumerate() {
            if i > 0 {
                writer.write_char(',')?;
            }
            let name = serde_json::to_string(name).map_err(|_| fmt::Error)?;
            let value = serde_json::to_string(value).map_err(|_| fmt::Error)?;
            write!(writer, "{name}:{value}")?;
        }
        writer.write_str("}\n")
    }
}

/// Collects an event's fields as JSON values.
#[derive(Default)]
struct JsonVisitor {
    fields: Map<String, Value>,
    log_target: Option<String>,
}

impl JsonVisitor {
    fn insert(&mut self, field: &Field, value: Value) {
        let name = field.name();
        if name == "log.target" {
            if let Value::String(target) = value {
                self.log_target = Some(target);
            }
        } else if !name.starts_with("log.") {
            self.fields.insert(name.to_string(), value);
        }
    }
}

impl Visit for JsonVisitor {
    fn record_f64(&mut self, field: &Field, value: f64) {
        let value = serde_json::Number::from_f64(value)
            .map(Value::Number)
            .unwrap_or_else(|| Value::String(value.to_string()));
        self.insert(field, value);
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.insert(field, value.into());
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.insert(field, value.into());
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.insert(field, value.into());
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        self.insert(field, value.into());
    }

    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        let mut text = value.to_string();
        let mut source = value.source();
        while let Some(cause) = source {
            text.push_str(&format!(": {cause}"));
            source = cause.source();
        }
        self.insert(field, Value::String(text));
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.insert(field, Value::String(format!("{value:?}")));
    }
}

/// For records bridged from the `log` crate: their original target.
fn log_target(event: &Event<'_>) -> Option<String> {
    struct Target(Option<String>);
    impl Visit for Target {
        fn record_str(&mut self, field: &Field, value: &str) {
            if field.name() == "log.target" {
                self.0 = Some(value.to_string());
            }
        }
        fn record_debug(&mut self, _: &Field, _: &dyn fmt::Debug) {}
    }
    if event.metadata().target() != "log" {
        return None;
    }
    let mut target = Target(None);
    event.record(&mut target);
    target.0
}

fn timestamp_now() -> String {
    crate::wall_time::rfc3339_ms(crate::wall_time::now_ms())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io;
    use std::sync::{Arc, Mutex};

    #[derive(Clone, Default)]
    struct Buffer(Arc<Mutex<Vec<u8>>>);

    impl io::Write for Buffer {
        fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(bytes);
            Ok(bytes.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    impl<'a> MakeWriter<'a> for Buffer {
        type Writer = Buffer;
        fn make_writer(&'a self) -> Buffer {
            self.clone()
        }
    }

    impl Buffer {
        fn text(&self) -> String {
            String::from_utf8(self.0.lock().unwrap().clone()).unwrap()
        }
    }

    /// Logs one event inside two spans with a subscriber of `format` reading `ids`.
    fn capture(format: LogFormat, ids: &'static Ids) -> String {
        let buffer = Buffer::default();
        let subscriber = build(format, EnvFilter::new("debug"), buffer.clone(), false, ids);
        tracing::subscriber::with_default(subscriber, || {
            let outer = tracing::info_span!("replica_loop", node = 7);
            let _outer = outer.enter();
            let inner = tracing::debug_span!("request", request_id = 42, method = "submit");
            let _inner = inner.enter();
            tracing::info!(job_id = 5, ok = true, ratio = 0.5, who = %"worker-a", "elected leader");
            tracing::trace!("filtered out");
        });
        buffer.text()
    }

    static SEVEN_THREE: Ids = Ids::new();
    static UNSET_IDS: Ids = Ids::new();

    fn seven_three() -> &'static Ids {
        SEVEN_THREE.replica.store(7, Ordering::Relaxed);
        SEVEN_THREE.term.store(3, Ordering::Relaxed);
        &SEVEN_THREE
    }

    #[test]
    fn json_lines_carry_replica_term_message_fields_and_spans() {
        let out = capture(LogFormat::Json, seven_three());
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines.len(), 1, "{out}");
        let line = lines[0];
        assert!(
            line.starts_with("{\"timestamp\":"),
            "key order kept: {line}"
        );
        let v: Value = serde_json::from_str(line).unwrap();
        let ts = v["timestamp"].as_str().unwrap();
        assert_eq!(ts.len(), "2026-11-26T05:00:00.123Z".len(), "{ts}");
        assert!(ts.ends_with('Z') && ts.as_bytes()[10] == b'T', "{ts}");
        assert_eq!(v["level"], "INFO");
        assert_eq!(v["target"], "scaleout::telemetry::tests");
        assert_eq!(v["replica"], 7);
        assert_eq!(v["term"], 3);
        assert_eq!(v["message"], "elected leader");
        assert_eq!(v["job_id"], 5);
        assert_eq!(v["ok"], true);
        assert_eq!(v["ratio"], 0.5);
        assert_eq!(v["who"], "worker-a");
        let spans = v["spans"].as_array().unwrap();
        assert_eq!(spans.len(), 2, "{line}");
        assert_eq!(spans[0]["name"], "replica_loop");
        assert_eq!(spans[0]["node"], 7);
        assert_eq!(spans[1]["name"], "request");
        assert_eq!(spans[1]["request_id"], 42);
        assert_eq!(spans[1]["method"], "submit");
    }

    #[test]
    fn text_lines_carry_replica_term_message_fields_and_spans() {
        let out = capture(LogFormat::Text, seven_three());
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines.len(), 1, "{out}");
        let line = lines[0];
        assert!(
            line.contains("  INFO replica=7 term=3 scaleout::telemetry::tests: elected leader"),
            "{line}"
        );
        assert!(line.contains("job_id=5"), "{line}");
        assert!(line.contains("ok=true"), "{line}");
        assert!(line.contains("who=worker-a"), "{line}");
        assert!(line.contains("node=7"), "{line}");
        assert!(line.contains("request_id=42"), "{line}");
        assert!(
            line.find("job_id=5") < line.find("request_id=42"),
            "event fields, then span fields: {line}"
        );
        assert!(!line.contains('\x1b'), "no colours: {line}");
    }

    #[test]
    fn replica_and_term_are_left_out_until_set() {
        let text = capture(LogFormat::Text, &UNSET_IDS);
        assert!(
            !text.contains("replica=") && !text.contains("term="),
            "{text}"
        );
        assert!(
            text.contains(" INFO scaleout::telemetry::tests: elected leader"),
            "{text}"
        );
        let json: Value =
            serde_json::from_str(capture(LogFormat::Json, &UNSET_IDS).trim()).unwrap();
        assert!(
            json.get("replica").is_none() && json.get("term").is_none(),
            "{json}"
        );
    }

    #[test]
    fn reserved_field_names_do_not_clobber_the_line() {
        let buffer = Buffer::default();
        let subscriber = build(
            LogFormat::Json,
            EnvFilter::new("info"),
            buffer.clone(),
            false,
            seven_three(),
        );
        tracing::subscriber::with_default(subscriber, || {
            tracing::info!(level = "custom", term = 99, "hello");
        });
        let v: Value = serde_json::from_str(buffer.text().trim()).unwrap();
        assert_eq!(v["level"], "INFO");
        assert_eq!(v["term"], 3);
        assert_eq!(v["fields.level"], "custom");
        assert_eq!(v["fields.term"], 99);
    }

    #[test]
    fn global_setters_and_public_subscriber() {
        set_replica(7);
        set_term(3);
        assert!(replica().is_some() && term().is_some());
        let buffer = Buffer::default();
        tracing::subscriber::with_default(
            subscriber(LogFormat::Text, "info", buffer.clone()),
            || {
                tracing::info!("global ids");
            },
        );
        let text = buffer.text();
        assert!(
            text.contains("replica=") && text.contains("term="),
            "{text}"
        );
        // An invalid directive falls back to `info` instead of failing.
        let _ = parse_filter("scaleout=[not valid");
    }

    #[test]
    fn log_format_parses() {
        assert_eq!("text".parse::<LogFormat>(), Ok(LogFormat::Text));
        assert_eq!("JSON".parse::<LogFormat>(), Ok(LogFormat::Json));
        let err = "yaml".parse::<LogFormat>().unwrap_err();
        assert!(err.to_string().contains("`yaml`"), "{err}");
        assert_eq!(LogFormat::Json.to_string(), "json");
        assert_eq!(
            <LogFormat as clap::ValueEnum>::from_str("json", true),
            Ok(LogFormat::Json)
        );
    }
}
