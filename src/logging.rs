//! Logging: `--log-format text` (simplelog's lines, as before) or `json`
//! (one JSON object a line for log shippers: `time` (UTC, RFC 3339 with
//! milliseconds), `level`, `target`, `message`, and the record's fields,
//! such as `conn`, `user`, `code`). Secrets never reach a log line in either
//! format (the settings print them redacted).

use std::io::Write;
use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::{Map, Value};

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

/// Install the logger for the process (stderr). A second call does nothing.
pub fn init(level: log::LevelFilter, format: LogFormat) {
    match format {
        LogFormat::Text => {
            let config = simplelog::ConfigBuilder::new()
                .set_target_level(simplelog::LevelFilter::Off)
                .set_thread_level(simplelog::LevelFilter::Off)
                .build();
            let _ = simplelog::TermLogger::init(
                level,
                config,
                simplelog::TerminalMode::Stderr,
                simplelog::ColorChoice::Never,
            );
        }
        LogFormat::Json => {
            if log::set_boxed_logger(Box::new(JsonLogger { level })).is_ok() {
                log::set_max_level(level);
            }
        }
    }
}

struct JsonLogger {
    level: log::LevelFilter,
}

impl log::Log for JsonLogger {
    fn enabled(&self, metadata: &log::Metadata) -> bool {
        metadata.level() <= self.level
    }

    fn log(&self, record: &log::Record) {
        if !self.enabled(record.metadata()) {
            return;
        }
        let mut line = json_line(record, SystemTime::now());
        line.push('\n');
        // One write per line, so lines of a crash or a burst never mix.
        let _ = std::io::stderr().lock().write_all(line.as_bytes());
    }

    fn flush(&self) {
        let _ = std::io::stderr().flush();
    }
}

/// One record as a JSON line (without the newline).
pub fn json_line(record: &log::Record, at: SystemTime) -> String {
    let mut object = Map::new();
    object.insert("time".into(), Value::String(rfc3339(at)));
    object.insert("level".into(), Value::String(record.level().to_string()));
    object.insert("target".into(), Value::String(record.target().to_string()));
    object.insert("message".into(), Value::String(record.args().to_string()));
    struct Fields<'a>(&'a mut Map<String, Value>);
    impl<'kvs> log::kv::VisitSource<'kvs> for Fields<'_> {
        fn visit_pair(
            &mut self,
            key: log::kv::Key<'kvs>,
            value: log::kv::Value<'kvs>,
        ) -> Result<(), log::kv::Error> {
            let v = match (value.to_u64(), value.to_i64(), value.to_bool()) {
                (Some(n), _, _) => Value::from(n),
                (_, Some(n), _) => Value::from(n),
                (_, _, Some(b)) => Value::from(b),
                _ => Value::String(value.to_string()),
            };
            // The fixed keys stay what they are.
            self.0.entry(key.as_str().to_string()).or_insert(v);
            Ok(())
        }
    }
    let _ = record.key_values().visit(&mut Fields(&mut object));
    Value::Object(object).to_string()
}

/// `at` as `2026-11-27T21:09:43.123Z`.
pub fn rfc3339(at: SystemTime) -> String {
    let since = at.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = since.as_secs();
    let (days, rest) = (secs / 86_400, secs % 86_400);
    let (y, m, d) = civil_from_days(days as i64);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:03}Z",
        rest / 3600,
        rest / 60 % 60,
        rest % 60,
        since.subsec_millis()
    )
}

/// Days since 1970-01-01 to (year, month, day), proleptic Gregorian
/// (Howard Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn times_are_rfc3339_utc() {
        let at = |s: u64, ms: u64| UNIX_EPOCH + Duration::from_millis(s * 1000 + ms);
        assert_eq!(rfc3339(at(0, 0)), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339(at(951_782_400, 5)), "2000-02-29T00:00:00.005Z");
        assert_eq!(rfc3339(at(1_795_791_783, 123)), "2026-11-27T15:03:03.123Z");
        assert_eq!(rfc3339(at(4_107_542_399, 999)), "2100-02-28T23:59:59.999Z");
    }

    #[test]
    fn a_record_is_one_json_object_with_its_fields() {
        let conn = "3.17";
        let args = format_args!("{conn} closed by client, \"quoted\"\nnext line");
        let kvs: &[(&str, log::kv::Value)] = &[
            ("conn", log::kv::Value::from_display(&conn)),
            ("code", log::kv::Value::from(1000u16)),
            ("level", log::kv::Value::from("not this one")),
        ];
        let record = log::Record::builder()
            .level(log::Level::Info)
            .target("switchboard::driver")
            .args(args)
            .key_values(&kvs)
            .build();
        let line = json_line(&record, UNIX_EPOCH);
        assert!(!line.contains('\n'), "{line}");
        let v: Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["time"], "1970-01-01T00:00:00.000Z");
        assert_eq!(v["level"], "INFO");
        assert_eq!(v["target"], "switchboard::driver");
        assert_eq!(v["message"], "3.17 closed by client, \"quoted\"\nnext line");
        assert_eq!(
            (v["conn"].as_str(), v["code"].as_u64()),
            (Some("3.17"), Some(1000))
        );
    }
}
