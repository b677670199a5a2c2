//! How admin commands print: aligned tables and key/value blocks for
//! people, one JSON document for scripts.

use serde::Serialize;
use std::io::Write;
use tabwriter::TabWriter;

/// Prints rows as columns aligned with two spaces between them.
pub fn table(headers: &[&str], rows: &[Vec<String>]) -> anyhow::Result<()> {
    let mut out = TabWriter::new(std::io::stdout().lock()).padding(2);
    writeln!(out, "{}", headers.join("\t"))?;
    for row in rows {
        writeln!(out, "{}", row.join("\t"))?;
    }
    out.flush()?;
    Ok(())
}

/// Prints `key  value` lines with the values aligned.
pub fn pairs(pairs: &[(&str, String)]) -> anyhow::Result<()> {
    let mut out = TabWriter::new(std::io::stdout().lock()).padding(2);
    for (key, value) in pairs {
        writeln!(out, "{key}\t{value}")?;
    }
    out.flush()?;
    Ok(())
}

pub fn json(value: &impl Serialize) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    serde_json::to_writer_pretty(&mut out, value)?;
    writeln!(out)?;
    Ok(())
}

/// `1.5 MiB`, `312 B`.
pub fn bytes(count: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = count as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{count} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

/// A duration in milliseconds, for people: `1m 30s 250ms`.
pub fn duration_ms(millis: f64) -> String {
    let millis = millis.max(0.0).round() as u64;
    humantime::format_duration(std::time::Duration::from_millis(millis)).to_string()
}

#[cfg(test)]
mod tests {
    #[test]
    fn sizes_are_readable() {
        assert_eq!(super::bytes(312), "312 B");
        assert_eq!(super::bytes(1536), "1.5 KiB");
        assert_eq!(super::bytes(5 * 1024 * 1024), "5.0 MiB");
    }
}
