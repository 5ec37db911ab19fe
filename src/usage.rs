//! `huabi usage`: the `usage_daily` view for operators, as a table, JSON or CSV, per campaign (the view's own
//! rows) or summed per platform or per account.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use time::{Date, Duration};

use crate::store::{DeliveryWait, ModelQueue, UsageRow};

/// Why `--since` was refused.
#[derive(Debug, thiserror::Error)]
#[error("--since takes a number of days like 7d, or a date like 2027-09-08: {0:?}")]
pub struct SinceError(String);

/// Output formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum UsageFormat {
    /// Aligned columns.
    Table,
    /// A JSON array of rows.
    Json,
    /// Comma-separated values with a header.
    Csv,
}

/// How rows are grouped (always per day).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum UsageBy {
    /// Per campaign, platform and account: the view's rows.
    Campaign,
    /// Per platform (`campaign` and `account` are `*`).
    Channel,
    /// Per platform and account (`campaign` is `*`).
    Account,
}

/// What a summed row puts where the grouping merged values.
const ALL: &str = "*";

/// Nearest-rank percentile `p` (0–100) of sorted `values`.
fn percentile(sorted: &[f64], p: usize) -> Option<f64> {
    let rank = (sorted.len() * p).div_ceil(100).max(1);
    sorted.get(rank - 1).copied()
}

/// `rows` grouped `by`; summed rows take their percentiles from `waits` (the view's cannot be combined).
pub fn group(rows: Vec<UsageRow>, waits: &[DeliveryWait], by: UsageBy) -> Vec<UsageRow> {
    let key = |day: &str, channel: &str, account: &str| match by {
        UsageBy::Campaign => None,
        UsageBy::Channel => Some((day.to_string(), channel.to_string(), ALL.to_string())),
        UsageBy::Account => Some((day.to_string(), channel.to_string(), account.to_string())),
    };
    if by == UsageBy::Campaign {
        return rows;
    }
    let mut groups: BTreeMap<(String, String, String), UsageRow> = BTreeMap::new();
    for row in rows {
        let Some(k) = key(&row.day, &row.channel, &row.account) else {
            continue;
        };
        let sum = groups.entry(k.clone()).or_insert_with(|| UsageRow {
            day: k.0.clone(),
            campaign: ALL.into(),
            channel: k.1.clone(),
            account: k.2.clone(),
            requests: 0,
            admitted: 0,
            limited: 0,
            blocked: 0,
            painted: 0,
            delivered: 0,
            failed: 0,
            flagged: 0,
            p50_secs: None,
            p95_secs: None,
        });
        sum.requests += row.requests;
        sum.admitted += row.admitted;
        sum.limited += row.limited;
        sum.blocked += row.blocked;
        sum.painted += row.painted;
        sum.delivered += row.delivered;
        sum.failed += row.failed;
        sum.flagged += row.flagged;
    }
    let mut secs: BTreeMap<(String, String, String), Vec<f64>> = BTreeMap::new();
    for wait in waits {
        if let Some(k) = key(&wait.day, &wait.channel, &wait.account) {
            secs.entry(k).or_default().push(wait.secs);
        }
    }
    for (k, mut values) in secs {
        if let Some(row) = groups.get_mut(&k) {
            values.sort_by(f64::total_cmp);
            row.p50_secs = percentile(&values, 50);
            row.p95_secs = percentile(&values, 95);
        }
    }
    let mut out: Vec<UsageRow> = groups.into_values().collect();
    out.sort_by(|a, b| {
        b.day
            .cmp(&a.day)
            .then(a.channel.cmp(&b.channel))
            .then(a.account.cmp(&b.account))
    });
    out
}

/// The first day `since` covers: `Nd` = the last N days including today, or a `YYYY-MM-DD` date.
pub fn first_day(since: &str, today: Date) -> Result<Date, SinceError> {
    let bad = || SinceError(since.chars().take(40).collect());
    if let Some(days) = since.strip_suffix('d') {
        let days: i64 = days.parse().map_err(|_| bad())?;
        if !(1..=3660).contains(&days) {
            return Err(bad());
        }
        return Ok(today - Duration::days(days - 1));
    }
    Date::parse(
        since,
        time::macros::format_description!("[year]-[month]-[day]"),
    )
    .map_err(|_| bad())
}

const HEADER: [&str; 14] = [
    "day",
    "campaign",
    "channel",
    "account",
    "requests",
    "admitted",
    "limited",
    "blocked",
    "painted",
    "delivered",
    "failed",
    "flagged",
    "p50_secs",
    "p95_secs",
];

fn cells(row: &UsageRow) -> [String; 14] {
    let secs = |v: Option<f64>| v.map_or(String::new(), |s| format!("{s:.2}"));
    [
        row.day.clone(),
        row.campaign.clone(),
        row.channel.clone(),
        row.account.clone(),
        row.requests.to_string(),
        row.admitted.to_string(),
        row.limited.to_string(),
        row.blocked.to_string(),
        row.painted.to_string(),
        row.delivered.to_string(),
        row.failed.to_string(),
        row.flagged.to_string(),
        secs(row.p50_secs),
        secs(row.p95_secs),
    ]
}

/// The queued jobs per model and LoRA set, marking those no live worker paints (for the table format).
pub fn render_queue(queue: &[ModelQueue]) -> String {
    if queue.is_empty() {
        return String::new();
    }
    let mut out = String::from("\nQueued now, by model:\n");
    for q in queue {
        let model = if q.model.is_empty() {
            "(default)"
        } else {
            &q.model
        };
        let loras = if q.loras == "[]" {
            String::new()
        } else {
            format!(" + {}", q.loras)
        };
        let served = if q.workers == 0 {
            "NO live worker paints it: it waits".to_string()
        } else {
            format!("{} worker(s)", q.workers)
        };
        let _ = writeln!(
            out,
            "  {model}{loras}: {} queued, oldest {:.0} min; {served}",
            q.queued, q.oldest_minutes
        );
    }
    out
}

/// The rows in `format`.
pub fn render(rows: &[UsageRow], format: UsageFormat) -> String {
    match format {
        UsageFormat::Json => serde_json::to_string_pretty(rows).unwrap_or_else(|_| "[]".into()),
        UsageFormat::Csv => {
            let quote = |cell: &str| {
                if cell.contains([',', '"', '\n']) {
                    format!("\"{}\"", cell.replace('"', "\"\""))
                } else {
                    cell.to_string()
                }
            };
            let mut out = HEADER.join(",") + "\n";
            for row in rows {
                let line: Vec<String> = cells(row).iter().map(|c| quote(c)).collect();
                out.push_str(&line.join(","));
                out.push('\n');
            }
            out
        }
        UsageFormat::Table => {
            let body: Vec<[String; 14]> = rows.iter().map(cells).collect();
            let width = |i: usize| {
                body.iter()
                    .map(|r| r[i].chars().count())
                    .chain([HEADER[i].len()])
                    .max()
                    .unwrap_or(0)
            };
            let widths: Vec<usize> = (0..HEADER.len()).map(width).collect();
            let mut out = String::new();
            let header = HEADER.map(str::to_string);
            for line in std::iter::once(&header).chain(body.iter()) {
                for (i, cell) in line.iter().enumerate() {
                    let pad = widths[i].saturating_sub(cell.chars().count());
                    let _ = write!(out, "{cell}{}  ", " ".repeat(pad));
                }
                out = out.trim_end().to_string();
                out.push('\n');
            }
            out
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A summed row as (campaign, channel, account, requests, p50, p95).
    type Summary = (String, String, String, i64, Option<f64>, Option<f64>);
    use time::macros::{date, datetime};

    fn row() -> UsageRow {
        UsageRow {
            day: "2027-09-10".into(),
            campaign: "mid,autumn".into(),
            channel: "wechat".into(),
            account: "default".into(),
            requests: 8,
            admitted: 5,
            limited: 1,
            blocked: 2,
            painted: 5,
            delivered: 4,
            failed: 0,
            flagged: 0,
            p50_secs: Some(3.14659),
            p95_secs: None,
        }
    }

    #[test]
    fn since_reads_days_or_a_date() {
        let today = crate::limits::shanghai_day(datetime!(2027-09-10 17:00 UTC));
        assert_eq!(
            today,
            date!(2027 - 09 - 11),
            "Shanghai is already on the next day"
        );
        assert_eq!(first_day("1d", today).expect("1d"), today);
        assert_eq!(first_day("7d", today).expect("7d"), date!(2027 - 09 - 05));
        assert_eq!(
            first_day("2027-09-01", today).expect("date"),
            date!(2027 - 09 - 01)
        );
        for bad in ["", "d", "0d", "-3d", "7", "7w", "2027-13-01", "99999999d"] {
            assert!(first_day(bad, today).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn formats() {
        let rows = [row()];
        let csv = render(&rows, UsageFormat::Csv);
        assert_eq!(
            csv.lines().nth(1),
            Some("2027-09-10,\"mid,autumn\",wechat,default,8,5,1,2,5,4,0,0,3.15,")
        );
        let json: serde_json::Value =
            serde_json::from_str(&render(&rows, UsageFormat::Json)).expect("json");
        assert_eq!(json[0]["blocked"], 2);
        let table = render(&rows, UsageFormat::Table);
        assert!(table.starts_with("day         campaign"), "{table}");
        assert_eq!(table.lines().count(), 2);
        assert_eq!(render(&[], UsageFormat::Json), "[]");
    }

    #[test]
    fn rows_are_summed_per_channel_or_account_with_percentiles_of_the_merged_waits() {
        let at = |campaign: &str, channel: &str, account: &str, requests| UsageRow {
            campaign: campaign.into(),
            channel: channel.into(),
            account: account.into(),
            requests,
            p50_secs: Some(99.0),
            ..row()
        };
        let rows = vec![
            at("a", "wechat", "default", 1),
            at("b", "wechat", "default", 2),
            at("a", "wechat", "brand", 4),
            at("a", "telegram", "bot", 8),
        ];
        let wait = |channel: &str, account: &str, secs| DeliveryWait {
            day: "2027-09-10".into(),
            campaign: "a".into(),
            channel: channel.into(),
            account: account.into(),
            secs,
        };
        let waits = [
            wait("wechat", "default", 1.0),
            wait("wechat", "default", 2.0),
            wait("wechat", "brand", 10.0),
            wait("telegram", "bot", 5.0),
        ];
        let summary = |rows: &[UsageRow]| -> Vec<Summary> {
            rows.iter()
                .map(|r| {
                    (
                        r.campaign.clone(),
                        r.channel.clone(),
                        r.account.clone(),
                        r.requests,
                        r.p50_secs,
                        r.p95_secs,
                    )
                })
                .collect()
        };
        let s = |v: &str| v.to_string();
        assert_eq!(
            summary(&group(rows.clone(), &waits, UsageBy::Channel)),
            [
                (s("*"), s("telegram"), s("*"), 8, Some(5.0), Some(5.0)),
                (s("*"), s("wechat"), s("*"), 7, Some(2.0), Some(10.0)),
            ]
        );
        assert_eq!(
            summary(&group(rows.clone(), &waits, UsageBy::Account)),
            [
                (s("*"), s("telegram"), s("bot"), 8, Some(5.0), Some(5.0)),
                (s("*"), s("wechat"), s("brand"), 4, Some(10.0), Some(10.0)),
                (s("*"), s("wechat"), s("default"), 3, Some(1.0), Some(2.0)),
            ]
        );
        assert_eq!(group(rows.clone(), &waits, UsageBy::Campaign), rows);
        assert_eq!(percentile(&[], 50), None);
    }

    #[test]
    fn the_queue_names_models_no_worker_paints() {
        assert_eq!(render_queue(&[]), "");
        let queue = render_queue(&[
            ModelQueue {
                model: "sdxl-anime".into(),
                loras: r#"[{"name":"moon","scale":0.8}]"#.into(),
                queued: 3,
                oldest_minutes: 12.4,
                workers: 0,
            },
            ModelQueue {
                model: "tiny-sd".into(),
                loras: "[]".into(),
                queued: 1,
                oldest_minutes: 0.2,
                workers: 2,
            },
        ]);
        assert!(
            queue.contains("sdxl-anime + [{\"name\":\"moon\",\"scale\":0.8}]: 3 queued, oldest 12 min; NO live worker"),
            "{queue}"
        );
        assert!(
            queue.contains("tiny-sd: 1 queued, oldest 0 min; 2 worker(s)"),
            "{queue}"
        );
    }
}
