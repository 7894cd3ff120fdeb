//! The final side-by-side table: every figure for both relays, the ratio, the target and whether
//! it is met.

/// A target for one figure.
#[derive(Clone, Copy, Debug)]
pub enum Goal {
    /// ours / upstream at most this (lower is better).
    RatioAtMost(f64),
    /// ours / upstream at least this (higher is better).
    RatioAtLeast(f64),
    /// ours at most this, in the row's unit.
    AtMost(f64),
    /// ours at least this, in the row's unit.
    AtLeast(f64),
}

/// One line of the table.
pub struct Row {
    /// What is measured (with its unit).
    pub metric: String,
    /// Ours.
    pub ours: Option<f64>,
    /// Upstream's.
    pub upstream: Option<f64>,
    /// Digits after the point.
    pub digits: usize,
    /// The target, if there is one.
    pub goal: Option<Goal>,
}

impl Row {
    /// A row without a target.
    pub fn new(metric: impl Into<String>, ours: Option<f64>, upstream: Option<f64>, digits: usize) -> Row {
        Row { metric: metric.into(), ours, upstream, digits, goal: None }
    }

    /// The same row with a target.
    pub fn goal(mut self, goal: Goal) -> Row {
        self.goal = Some(goal);
        self
    }

    fn ratio(&self) -> Option<f64> {
        match (self.ours, self.upstream) {
            (Some(o), Some(u)) if u > 0.0 && o.is_finite() && u.is_finite() => Some(o / u),
            _ => None,
        }
    }

    /// Is the target met? `None` when there is no target or not enough data.
    pub fn met(&self) -> Option<bool> {
        match self.goal? {
            Goal::RatioAtMost(x) => self.ratio().map(|r| r <= x),
            Goal::RatioAtLeast(x) => self.ratio().map(|r| r >= x),
            Goal::AtMost(x) => self.ours.map(|o| o <= x),
            Goal::AtLeast(x) => self.ours.map(|o| o >= x),
        }
    }
}

/// `1234567.8` as `1,234,568` (with `digits` decimals when asked).
pub fn num(v: f64, digits: usize) -> String {
    if !v.is_finite() {
        return "-".to_owned();
    }
    let text = format!("{v:.digits$}");
    let (int, frac) = text.split_once('.').map_or((text.as_str(), None), |(i, f)| (i, Some(f)));
    let (sign, int) = int.strip_prefix('-').map_or(("", int), |i| ("-", i));
    let mut grouped = String::new();
    for (i, c) in int.chars().enumerate() {
        if i > 0 && (int.len() - i).is_multiple_of(3) {
            grouped.push(',');
        }
        grouped.push(c);
    }
    match frac {
        Some(f) => format!("{sign}{grouped}.{f}"),
        None => format!("{sign}{grouped}"),
    }
}

fn ratio_text(r: f64) -> String {
    if r >= 10.0 { format!("{r:.0}x") } else { format!("{r:.2}x") }
}

/// Prints the table (sections are rows whose metric starts with `## `).
pub fn print(rows: &[Row], upstream_ran: bool) {
    let header = ["metric", "aether-actix", "upstream 0.4.0", "ours/upstream", "target", "met?"];
    let cells: Vec<[String; 6]> = rows
        .iter()
        .map(|r| {
            if r.metric.starts_with("## ") {
                return [r.metric.clone(), String::new(), String::new(), String::new(), String::new(), String::new()];
            }
            let target = match r.goal {
                None => String::new(),
                Some(Goal::RatioAtMost(x)) => format!("<= {x}x upstream"),
                Some(Goal::RatioAtLeast(x)) => format!(">= {x}x upstream"),
                Some(Goal::AtMost(x)) => format!("<= {}", num(x, 0)),
                Some(Goal::AtLeast(x)) => format!(">= {x}"),
            };
            let met = match (r.goal, r.met()) {
                (None, _) => String::new(),
                (Some(_), Some(true)) => "yes".to_owned(),
                (Some(_), Some(false)) => "NO".to_owned(),
                (Some(_), None) if !upstream_ran => "n/a (no upstream)".to_owned(),
                (Some(_), None) => "n/a".to_owned(),
            };
            [
                r.metric.clone(),
                r.ours.map_or("-".to_owned(), |v| num(v, r.digits)),
                r.upstream.map_or("-".to_owned(), |v| num(v, r.digits)),
                r.ratio().map_or("-".to_owned(), ratio_text),
                target,
                met,
            ]
        })
        .collect();
    let mut widths = header.map(str::len);
    for row in cells.iter().filter(|c| !c[0].starts_with("## ")) {
        for (w, c) in widths.iter_mut().zip(row) {
            *w = (*w).max(c.chars().count());
        }
    }
    let line = |c: &[String; 6]| {
        format!(
            "| {:<w0$} | {:>w1$} | {:>w2$} | {:>w3$} | {:<w4$} | {:<w5$} |",
            c[0],
            c[1],
            c[2],
            c[3],
            c[4],
            c[5],
            w0 = widths[0],
            w1 = widths[1],
            w2 = widths[2],
            w3 = widths[3],
            w4 = widths[4],
            w5 = widths[5]
        )
    };
    println!("{}", line(&header.map(str::to_owned)));
    println!("|{}|", widths.iter().map(|w| "-".repeat(w + 2)).collect::<Vec<_>>().join("|"));
    for c in &cells {
        if let Some(section) = c[0].strip_prefix("## ") {
            println!("| **{section}** |  |  |  |  |  |");
        } else {
            println!("{}", line(c));
        }
    }
}
