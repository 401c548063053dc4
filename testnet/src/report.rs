//! The report of a testnet run: figures, `report.json`, and a plot of finished nodes over time.

use std::path::Path;

use anyhow::Context;
use plotters::prelude::*;
use serde::Serialize;

use crate::regions::{self, Region, Regions};

/// One downloader's outcome.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Finish {
    pub(crate) name: String,
    /// Its region, with two regions or more.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) region: Option<Region>,
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
    /// What the seed pushed into storage meanwhile (its `pushed_bytes`), over the same uplink.
    pub(crate) seed_pushed: u64,
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
    /// Piece bytes that crossed between regions: the sum of every node's and storage node's
    /// own `cross_region_bytes` counter, read from its status at the end.
    pub(crate) cross_region_bytes: u64,
    /// Piece bytes that crossed between regions for requests that ended without their piece
    /// (cancelled, failed): every node's `cross_region_wasted_bytes`, summed.
    pub(crate) cross_region_wasted_bytes: u64,
    /// Bytes the router sent into the regions (with `--netns`): every packet that crossed a
    /// border, IP and QUIC headers and tracker traffic included; a wire-level check on
    /// [`Self::cross_region_bytes`].
    pub(crate) border_wire_bytes: Option<u64>,
    /// The rate each way between regions, bytes per second, if shaped.
    pub(crate) inter_region_limit: Option<u64>,
    /// Whether the tracker was told to ignore regions in lookups and hints.
    pub(crate) regions_ignored: bool,
    /// Per region, `r0` first, with two regions or more (empty with one).
    pub(crate) regions: Vec<RegionFigures>,
    /// The largest region's bound: the region-aware bound on the last finish of the run.
    pub(crate) region_bound_s: Option<f64>,
    /// The last finish over [`Self::region_bound_s`].
    pub(crate) ratio_to_region_bound: Option<f64>,
}

/// One region's downloaders against the region-aware bound.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct RegionFigures {
    pub(crate) name: Region,
    pub(crate) downloaders: usize,
    /// Seconds from the common start to the region's last fetch's end.
    pub(crate) last_finish_s: f64,
    /// The region-aware fluid bound ([`crate::regions`]): T* over the region for the seed's
    /// region; for another, max(F/U, (n−1)·F/(n·U), F/L). Absent when no limit makes it finite.
    pub(crate) bound_s: Option<f64>,
    pub(crate) ratio_to_bound: Option<f64>,
    /// Bytes the router sent into the region (with `--netns`): everything that crossed its
    /// border inwards, headers and tracker traffic included.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) wire_bytes_in: Option<u64>,
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
        let bound = upload_limit
            .filter(|&u| n > 0 && u > 0)
            .map(|u| regions::fluid_bound(file_size, u, u, n));
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
            cross_region_bytes: 0,
            cross_region_wasted_bytes: 0,
            border_wire_bytes: None,
            inter_region_limit: None,
            regions_ignored: false,
            regions: Vec::new(),
            region_bound_s: None,
            ratio_to_region_bound: None,
        }
    }

    /// Fills the per-region figures from the downloaders' regions (nothing with one region).
    /// The seed, node0, is in `r0`.
    pub(crate) fn set_regions(&mut self, regions: &Regions) {
        self.inter_region_limit = regions.inter_limit();
        self.regions_ignored = regions.ignored();
        if regions.is_single() {
            return;
        }
        self.regions = regions
            .all()
            .map(|r| {
                let times: Vec<f64> =
                    self.finish.iter().filter(|f| f.region == Some(r)).map(|f| f.seconds).collect();
                let last = times.iter().copied().fold(0.0, f64::max);
                let bound = regions::region_bound(
                    self.file_size,
                    self.upload_limit,
                    regions.inter_limit(),
                    times.len(),
                    r == Region(0),
                );
                RegionFigures {
                    name: r,
                    downloaders: times.len(),
                    last_finish_s: last,
                    bound_s: bound,
                    ratio_to_bound: bound.filter(|&b| b > 0.0).map(|b| last / b),
                    wire_bytes_in: None,
                }
            })
            .collect();
        // Only if every region has a bound: a region without one could be the slowest.
        self.region_bound_s = self
            .regions
            .iter()
            .map(|r| r.bound_s)
            .try_fold(0.0, |m: f64, b| b.map(|b| m.max(b)))
            .filter(|&b| b > 0.0);
        self.ratio_to_region_bound = self.region_bound_s.map(|b| self.last_finish_s / b);
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
        let bounds = self.regions.iter().filter_map(|r| r.bound_s);
        let x_max =
            bounds.fold(self.last_finish_s.max(self.bound_s.unwrap_or(0.0)), f64::max) * 1.1 + 0.1;
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
        chart
            .draw_series(LineSeries::new(steps(self.finish.iter(), x_max), BLUE.stroke_width(2)))
            .map_err(err)?
            .label("finished nodes")
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], BLUE.stroke_width(2)));
        // Each region: its own finishes, and its bound dashed in the same colour.
        for r in &self.regions {
            let colour = region_colour(r.name).stroke_width(2);
            let mine = self.finish.iter().filter(|f| f.region == Some(r.name));
            chart
                .draw_series(LineSeries::new(steps(mine, x_max), colour))
                .map_err(err)?
                .label(format!("{} finished", r.name))
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], colour));
            if let Some(b) = r.bound_s {
                chart
                    .draw_series(DashedLineSeries::new(vec![(b, 0.0), (b, y_max)], 6, 4, colour))
                    .map_err(err)?
                    .label(format!("{} bound {b:.1} s", r.name))
                    .legend(move |(x, y)| {
                        // Two dashes, placed relative to the anchor.
                        let dash = |a: i32| PathElement::new(vec![(a, 0), (a + 6, 0)], colour);
                        EmptyElement::at((x, y)) + dash(0) + dash(14)
                    });
            }
        }
        // With regions, the seed's region's bound is T* itself (drawn there, dashed).
        if let Some(b) = self.bound_s.filter(|_| self.regions.is_empty()) {
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
            "\nuploaded: seed {:.1} MiB + {:.1} MiB pushed into storage ({:.2} × the file), nodes {:.1} MiB, storage {:.1} MiB; bad pieces detected: {}",
            mib(self.uploaded.seed),
            mib(self.uploaded.seed_pushed),
            (self.uploaded.seed + self.uploaded.seed_pushed) as f64 / self.file_size.max(1) as f64,
            mib(self.uploaded.nodes),
            mib(self.uploaded.storage),
            self.bad_pieces
        );
        if !self.regions.is_empty() {
            s += &format!(
                "\nper region (bound: T* over the seed's region; elsewhere max(F/U, (n-1)·F/(n·U), \
                 F/L), the file crossing the {} border once):",
                self.inter_region_limit.map_or("unshaped".to_string(), |l| format!(
                    "{}/s",
                    shoal_control::human_bytes(l as f64)
                ))
            );
            for r in &self.regions {
                s += &format!(
                    "\n  {}: {} downloaders, last {:.2} s, bound {}",
                    r.name,
                    r.downloaders,
                    r.last_finish_s,
                    match (r.bound_s, r.ratio_to_bound) {
                        (Some(b), Some(q)) => format!("{b:.2} s, last / bound = {q:.2}"),
                        _ => "none (no limit)".to_string(),
                    }
                );
                if let Some(w) = r.wire_bytes_in {
                    s += &format!(
                        "; {:.1} MiB on the wire into it ({:.2} × the file)",
                        mib(w),
                        w as f64 / self.file_size.max(1) as f64
                    );
                }
            }
            if let (Some(b), Some(q)) = (self.region_bound_s, self.ratio_to_region_bound) {
                s += &format!("\nregion-aware bound {b:.2} s; last finish / bound = {q:.2}");
            }
            s += &format!(
                "\nbytes across regions: {:.1} MiB ({:.2} × the file){}",
                mib(self.cross_region_bytes),
                self.cross_region_bytes as f64 / self.file_size.max(1) as f64,
                if self.regions_ignored { "; the tracker ignored regions" } else { "" }
            );
            s += &format!(
                "\npiece bytes across regions for requests that ended without their piece: \
                 {:.1} MiB ({:.2} × the file)",
                mib(self.cross_region_wasted_bytes),
                self.cross_region_wasted_bytes as f64 / self.file_size.max(1) as f64
            );
            if let Some(w) = self.border_wire_bytes {
                s += &format!(
                    "\non the wire into regions (headers, tracker traffic included): {:.1} MiB \
                     ({:.2} × the file)",
                    mib(w),
                    w as f64 / self.file_size.max(1) as f64
                );
            }
        }
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

/// A region's colour in the plot: distinct and readable on white for the first few.
fn region_colour(r: Region) -> RGBColor {
    const FIRST: [RGBColor; 6] = [
        RGBColor(0, 150, 60),
        RGBColor(230, 110, 0),
        RGBColor(140, 40, 190),
        RGBColor(0, 150, 190),
        RGBColor(200, 30, 90),
        RGBColor(120, 100, 0),
    ];
    FIRST.get(r.0).copied().unwrap_or_else(|| {
        let c = Palette99::pick(r.0).to_rgba();
        RGBColor(c.0, c.1, c.2)
    })
}

/// A step line of finishes: 0 until the first, one more at each, flat to `x_max`.
fn steps<'a>(finish: impl Iterator<Item = &'a Finish>, x_max: f64) -> Vec<(f64, f64)> {
    let mut out = vec![(0.0, 0.0)];
    let mut n = 0.0;
    for f in finish {
        out.push((f.seconds, n));
        n += 1.0;
        out.push((f.seconds, n));
    }
    out.push((x_max, n));
    out
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
            region: None,
            node_id: "x".into(),
            seconds: s,
            bad_pieces: 0,
            uploaded_bytes: 0,
        }
    }

    #[test]
    fn figures_per_region() {
        let at = |name: &str, s: f64, r: usize| Finish {
            name: name.into(),
            region: Some(Region(r)),
            ..finish(s)
        };
        let finishes = vec![at("node1", 9.0, 1), at("node2", 3.0, 0), at("node3", 20.0, 1)];
        let mut r = Report::new(64 << 20, Some(16 << 20), 2, finishes, Uploaded::default(), None);
        r.set_regions(&Regions::new(2, Some(4 << 20), false, 4, true).unwrap());
        let got: Vec<_> = r
            .regions
            .iter()
            .map(|g| (g.name.to_string(), g.downloaders, g.last_finish_s, g.bound_s))
            .collect();
        // r0 holds the seed: F/U = 4 s; r1 gets the file across 4 MiB/s: F/L = 16 s.
        assert_eq!(got, [("r0".into(), 1, 3.0, Some(4.0)), ("r1".into(), 2, 20.0, Some(16.0))]);
        assert_eq!(r.regions[1].ratio_to_bound, Some(1.25));
        assert_eq!((r.region_bound_s, r.ratio_to_region_bound), (Some(16.0), Some(1.25)));
        assert_eq!(r.inter_region_limit, Some(4 << 20));
        let text = r.summary();
        assert!(text.contains("  r1: 2 downloaders, last 20.00 s, bound 16.00 s"), "{text}");
        // One region: no per-region figures.
        let mut one = Report::new(1 << 20, None, 0, vec![finish(1.0)], Uploaded::default(), None);
        one.set_regions(&Regions::single());
        assert!(one.regions.is_empty() && one.region_bound_s.is_none());
        assert!(!one.summary().contains("per region"));
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
