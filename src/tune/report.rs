//! What tuning tells the user: a summary per op and a table of every launch.

use std::collections::BTreeMap;

use super::{Launch, Source, TuneReport};

impl TuneReport {
    /// Every launch's configuration by key, as the checkpoint records it.
    pub fn choices(&self) -> BTreeMap<String, String> {
        self.launches
            .iter()
            .map(|l| (l.key.clone(), l.chosen.clone()))
            .collect()
    }

    /// The summary: one line for the whole, then per op the launches, how many changed
    /// from the default, and the summed time of the chosen and the default configurations
    /// where both were measured.
    pub fn text(&self) -> String {
        let count = |s: Source| self.launches.iter().filter(|l| l.source == s).count();
        let mut out = format!(
            "tuning ({:?}): {} launches: {} timed, {} cached, {} from the checkpoint, {} by the policy ({} left for later runs); {:.2} s\n",
            self.mode,
            self.launches.len(),
            count(Source::Timed),
            count(Source::Cached),
            count(Source::Recorded),
            count(Source::Policy),
            self.left_for_later,
            self.seconds
        );
        let mut by_op: BTreeMap<&str, Vec<&Launch>> = BTreeMap::new();
        for l in &self.launches {
            by_op.entry(&l.op).or_default().push(l);
        }
        for (op, ls) in by_op {
            let ls: Vec<&Launch> = ls;
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
            out.push_str(&format!(
                "  {op}: {} launches ({}), {changed} not the default{times}\n",
                ls.len(),
                picks.join(", ")
            ));
        }
        for w in &self.warnings {
            out.push_str(&format!("  warning: {w}\n"));
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
            out.push_str(&format!(
                "{:<62} {:<26} {:<9} {:>10} {:>10}\n",
                l.key,
                l.chosen,
                source,
                us(l.micros),
                us(l.default_micros)
            ));
        }
        out
    }
}
