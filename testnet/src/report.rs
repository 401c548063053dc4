//! The report of a testnet run: figures, `report.json`, and a plot of finished nodes over time.

use std::path::Path;

use anyhow::Context;
use plotters::prelude::*;
use serde::Serialize;

/// One downloader's outcome.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Finish {
    pub(crate) name: String,
    pub(crate) node_id: String,
    /// Seconds from the common start to the fetch's end.
    pub(crate) seconds: f64,
    pub(crate) bad_pieces: u64,
    /// Bytes it uploaded to others (its own counter).
    pub(crate) uploaded_bytes: u64,
}

/// Bytes uploaded, by kind of node (each node's own `uploaded_bytes` counter).
#[derive(Debug, Clone, Default, Serialize)]
pub(crate) struct Uploaded {
    pub(crate) seed: u64,
    pub(crate) nodes: u64,
    pub(crate) storage: u64,
}

/// Every figure of a run.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Report {
    pub(crate) file_size: u64,
    pub(crate) upload_limit: Option<u64>,
    pub(crate) downloaders: usize,
    pub(crate) storage_nodes: usize,
    pub(crate) finish: Vec<Finish>,
    pub(crate) last_finish_s: f64,
    pub(crate) mean_finish_s: f64,
    pub(crate) p99_finish_s: f64,
    /// Kumar and Ross's fluid lower bound, T* = max(S/U, N·S/(U + N·U)), with every node's
    /// upload U (the seed's included); absent without a limit.
    pub(crate) bound_s: Option<f64>,
    pub(crate) ratio_to_bound: Option<f64>,
    pub(crate) uploaded: Uploaded,
    pub(crate) bad_pieces: u64,
    /// Pieces storage held at the end, of how many (when there is storage).
    pub(crate) storage_pieces: Option<(u64, u64)>,
    /// CPU the testnet's processes (tracker, storage, nodes) spent during the run.
    pub(crate) cpu: Option<Cpu>,
}

/// CPU time of a run against the bytes it delivered.
#[derive(Debug, Clone, Copy, Serialize)]
pub(crate) struct Cpu {
    /// User plus system seconds of every process of the testnet, from the common start to the
    /// last finish.
    pub(crate) seconds: f64,
    /// Those seconds per GiB delivered to the downloaders (each downloader's copy counts).
    pub(crate) seconds_per_gib: f64,
}

impl Cpu {
    /// `seconds` spent delivering `downloaders` copies of `file_size` bytes.
    pub(crate) fn new(seconds: f64, downloaders: usize, file_size: u64) -> Option<Self> {
        let gib = downloaders as f64 * file_size as f64 / f64::from(1u32 << 30);
        (gib > 0.0 && seconds.is_finite()).then(|| Self { seconds, seconds_per_gib: seconds / gib })
    }
}

impl Report {
    pub(crate) fn new(
        file_size: u64,
        upload_limit: Option<u64>,
        storage_nodes: usize,
        mut finish: Vec<Finish>,
        uploaded: Uploaded,
        storage_pieces: Option<(u64, u64)>,
    ) -> Self {
        finish.sort_by(|a, b| a.seconds.total_cmp(&b.seconds));
        let n = finish.len();
        let times: Vec<f64> = finish.iter().map(|f| f.seconds).collect();
        let last = times.last().copied().unwrap_or(0.0);
        let mean = if n == 0 { 0.0 } else { times.iter().sum::<f64>() / n as f64 };
        let p99 =
            if n == 0 { 0.0 } else { times[((n as f64 * 0.99).ceil() as usize).clamp(1, n) - 1] };
        let bound = upload_limit.filter(|_| n > 0).map(|u| {
            let (s, u, n) = (file_size as f64, u as f64, n as f64);
            (s / u).max(n * s / (u + n * u))
        });
        Self {
            file_size,
            upload_limit,
            downloaders: n,
            storage_nodes,
            bad_pieces: finish.iter().map(|f| f.bad_pieces).sum(),
            finish,
            last_finish_s: last,
            mean_finish_s: mean,
            p99_finish_s: p99,
            ratio_to_bound: bound.map(|b| last / b),
            bound_s: bound,
            uploaded,
            storage_pieces,
            cpu: None,
        }
    }

    /// Writes `report.json`, `report.svg` and `report.png` into `dir`; returns a note if the
    /// plots could not be drawn.
    pub(crate) fn write(&self, dir: &Path) -> anyhow::Result<Option<String>> {
        std::fs::write(dir.join("report.json"), serde_json::to_vec_pretty(self)?)
            .context("writing report.json")?;
        if !register_font() {
            return Ok(Some("no TTF font found (install fonts-dejavu-core): plots skipped".into()));
        }
        self.plot(SVGBackend::new(&dir.join("report.svg"), (800, 500)).into_drawing_area())?;
        self.plot(BitMapBackend::new(&dir.join("report.png"), (800, 500)).into_drawing_area())?;
        Ok(None)
    }

    fn plot<DB: DrawingBackend>(
        &self,
        root: DrawingArea<DB, plotters::coord::Shift>,
    ) -> anyhow::Result<()>
    where
        DB::ErrorType: 'static,
    {
        let err =
            |e: DrawingAreaErrorKind<DB::ErrorType>| anyhow::anyhow!("drawing the plot: {e:?}");
        root.fill(&WHITE).map_err(err)?;
        let x_max = self.last_finish_s.max(self.bound_s.unwrap_or(0.0)) * 1.1 + 0.1;
        let y_max = self.downloaders.max(1) as f64;
        let mut chart = ChartBuilder::on(&root)
            .caption("Shoal testnet: nodes finished over time", ("sans-serif", 22))
            .margin(15)
            .x_label_area_size(40)
            .y_label_area_size(50)
            .build_cartesian_2d(0.0..x_max, 0.0..y_max)
            .map_err(err)?;
        chart
            .configure_mesh()
            .x_desc("seconds since start")
            .y_desc("nodes finished")
            .y_labels(self.downloaders.max(1) + 1)
            .y_label_formatter(&|v| format!("{v:.0}"))
            .draw()
            .map_err(err)?;
        // A step line: 0 until the first finish, one more at each.
        let mut steps = vec![(0.0, 0.0)];
        for (i, f) in self.finish.iter().enumerate() {
            steps.push((f.seconds, i as f64));
            steps.push((f.seconds, (i + 1) as f64));
        }
        steps.push((x_max, self.finish.len() as f64));
        chart
            .draw_series(LineSeries::new(steps, BLUE.stroke_width(2)))
            .map_err(err)?
            .label("finished nodes")
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], BLUE.stroke_width(2)));
        if let Some(b) = self.bound_s {
            chart
                .draw_series(LineSeries::new(vec![(b, 0.0), (b, y_max)], RED.stroke_width(2)))
                .map_err(err)?
                .label(format!("fluid lower bound T* = {b:.1} s"))
                .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], RED.stroke_width(2)));
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::LowerRight)
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .draw()
            .map_err(err)?;
        root.present().map_err(err)?;
        Ok(())
    }

    /// The human summary.
    pub(crate) fn summary(&self) -> String {
        let mib = |b: u64| b as f64 / (1024.0 * 1024.0);
        let mut s = format!(
            "{} downloaders fetched {:.1} MiB: last {:.2} s, mean {:.2} s, p99 {:.2} s",
            self.downloaders,
            mib(self.file_size),
            self.last_finish_s,
            self.mean_finish_s,
            self.p99_finish_s
        );
        if let (Some(b), Some(r)) = (self.bound_s, self.ratio_to_bound) {
            s += &format!("\nfluid lower bound T* = {b:.2} s; last finish / T* = {r:.2}");
        }
        s += &format!(
            "\nuploaded: seed {:.1} MiB ({:.2} × the file), nodes {:.1} MiB, storage {:.1} MiB; bad pieces detected: {}",
            mib(self.uploaded.seed),
            self.uploaded.seed as f64 / self.file_size.max(1) as f64,
            mib(self.uploaded.nodes),
            mib(self.uploaded.storage),
            self.bad_pieces
        );
        if let Some((have, total)) = self.storage_pieces {
            s += &format!("\nstorage holds {have}/{total} pieces");
        }
        if let Some(c) = self.cpu {
            s += &format!(
                "\nCPU: {:.1} s over every process, {:.1} s per GiB delivered",
                c.seconds, c.seconds_per_gib
            );
        }
        s
    }
}

/// Makes a system TTF font available to plotters; false if none is found.
fn register_font() -> bool {
    const CANDIDATES: [&str; 4] = [
        "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
        "/usr/share/fonts/TTF/DejaVuSans.ttf",
        "/usr/share/fonts/dejavu/DejaVuSans.ttf",
        "/usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf",
    ];
    let Some(bytes) = CANDIDATES.iter().find_map(|p| std::fs::read(p).ok()) else { return false };
    // plotters keeps the font for the life of the process.
    let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
    plotters::style::register_font("sans-serif", FontStyle::Normal, bytes).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn finish(s: f64) -> Finish {
        Finish {
            name: "n".into(),
            node_id: "x".into(),
            seconds: s,
            bad_pieces: 0,
            uploaded_bytes: 0,
        }
    }

    #[test]
    fn figures() {
        let r = Report::new(
            64 << 20,
            Some(8 << 20),
            0,
            vec![finish(10.0), finish(8.0), finish(12.0)],
            Uploaded::default(),
            None,
        );
        assert_eq!(r.last_finish_s, 12.0);
        assert_eq!(r.mean_finish_s, 10.0);
        // S/U = 8 s; N·S/(U + N·U) = 3·64/(8·4) = 6 s.
        assert_eq!(r.bound_s, Some(8.0));
        assert_eq!(r.ratio_to_bound, Some(1.5));
        assert_eq!(r.finish[0].seconds, 8.0, "sorted");
    }
}
