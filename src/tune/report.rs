//! What tuning and the self-check tell the user: one line by default, a summary per op with
//! `--verbose`, and a table of every launch for `plan` and `bench --profile`.

use std::collections::BTreeMap;
use std::fmt::Write;

use super::{Launch, Source, TuneMode, TuneReport};

impl TuneReport {
    /// Every launch's configuration by key, as the checkpoint records it.
    pub fn choices(&self) -> BTreeMap<String, String> {
        self.launches
            .iter()
            .map(|l| (l.key.clone(), l.chosen.clone()))
            .collect()
    }

    fn count(&self, s: Source) -> usize {
        self.launches.iter().filter(|l| l.source == s).count()
    }

    /// One line: the mode, what was tuned, what the self-check did, the time; then one line
    /// per warning.
    pub fn text(&self) -> String {
        let mode = format!("{:?}", self.mode).to_lowercase();
        let changed = self
            .launches
            .iter()
            .filter(|l| l.chosen != l.default)
            .count();
        let tuning = match self.mode {
            TuneMode::Off => format!("tuning off, {} launches by the policy", self.launches.len()),
            _ => format!(
                "tuning {mode}: {} launches, {changed} not the default ({} timed, {} cached, {} left for later)",
                self.launches.len(),
                self.count(Source::Timed),
                self.count(Source::Cached) + self.count(Source::Recorded),
                self.left_for_later
            ),
        };
        let c = &self.check;
        let check = match c.enabled {
            false => "self-check off".to_string(),
            true => format!(
                "self-check: {} checked ({:.2} s, compiling included), {} cached, {} failed",
                c.checked,
                c.seconds,
                c.cached,
                c.failed.len()
            ),
        };
        let mut out = format!("{tuning}; {check}; {:.2} s\n", self.seconds);
        for w in &self.warnings {
            let _ = writeln!(out, "  warning: {w}");
        }
        out
    }

    /// Per op: the launches, their configurations, how many changed from the default, and
    /// the summed time of the chosen and the baseline configurations where both were measured.
    pub fn detail(&self) -> String {
        let mut out = String::new();
        let mut by_op: BTreeMap<&str, Vec<&Launch>> = BTreeMap::new();
        for l in &self.launches {
            by_op.entry(&l.op).or_default().push(l);
        }
        for (op, ls) in by_op {
            let changed = ls.iter().filter(|l| l.chosen != l.default).count();
            let both: Vec<(f64, f64)> = ls
                .iter()
                .filter_map(|l| Some((l.micros?, l.default_micros?)))
                .collect();
            let (tuned, default): (f64, f64) =
                both.iter().fold((0.0, 0.0), |a, b| (a.0 + b.0, a.1 + b.1));
            let times = match both.is_empty() {
                true => String::new(),
                false => format!(
                    "; measured {} of them: {:.3} ms tuned vs {:.3} ms default ({:.2}x)",
                    both.len(),
                    tuned / 1e3,
                    default / 1e3,
                    default / tuned.max(1e-9)
                ),
            };
            let mut picks: BTreeMap<&str, usize> = BTreeMap::new();
            for l in &ls {
                *picks.entry(&l.chosen).or_default() += 1;
            }
            let picks: Vec<String> = picks.iter().map(|(c, n)| format!("{c} x{n}")).collect();
            let _ = writeln!(
                out,
                "  {op}: {} launches ({}), {changed} not the default{times}",
                ls.len(),
                picks.join(", ")
            );
        }
        for (label, why) in &self.check.failed {
            let _ = writeln!(out, "  self-check failed: {label}: {why}");
        }
        out
    }

    /// Every launch: key, configuration, where it came from, and its times where measured.
    pub fn table(&self) -> String {
        let mut out = format!(
            "{:<62} {:<26} {:<9} {:>10} {:>10}\n",
            "launch", "configuration", "source", "us", "default us"
        );
        for l in &self.launches {
            let us = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.0}"));
            let source = format!("{:?}", l.source).to_lowercase();
            let _ = writeln!(
                out,
                "{:<62} {:<26} {:<9} {:>10} {:>10}",
                l.key,
                l.chosen,
                source,
                us(l.micros),
                us(l.default_micros)
            );
        }
        out
    }
}
