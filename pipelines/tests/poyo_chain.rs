//! dff → moments → predictability on the real Suite2p traces (../shared/data/suite2p-fissa),
//! without the daemon: the final labels are the POYO-SSL rule applied to scipy's skewness and
//! excess kurtosis of F − 0.7·Fneu (`expected_moments.json`), and every trace row leaves on the
//! port of the label its neuron had when the row was routed.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, Float32Array, Float64Array, Int32Array, Int64Array, StringArray,
};
use arrow::record_batch::RecordBatch;
use pipelines::component::{BuildContext, Input, Transform, TransformContext};
use pipelines::registry::build_transform;
use pipelines::stats::PoyoRule;
use pipelines::stream::traces_schema;

const RATE: f64 = 30.0;

fn data() -> Option<PathBuf> {
    let d = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/data/suite2p-fissa");
    if d.join("F.npy").exists() {
        return Some(d);
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "CI must have ../shared/data beside the clone ({})",
        d.display()
    );
    eprintln!("\n!!!!! SKIPPED: {} not found !!!!!\n", d.display());
    None
}

fn transform(type_name: &str, id: &str, inputs: &[&str], options: &str) -> Box<dyn Transform> {
    let inputs: Vec<String> = inputs.iter().map(|s| s.to_string()).collect();
    build_transform(
        type_name,
        &BuildContext {
            id,
            data_dir: "/tmp".as_ref(),
            inputs: &inputs,
        },
        toml::from_str(options).unwrap(),
    )
    .unwrap_or_else(|e| panic!("{e:?}"))
}

fn col<'a, T: 'static>(b: &'a RecordBatch, name: &str) -> &'a T {
    b.column(b.schema().index_of(name).unwrap())
        .as_any()
        .downcast_ref::<T>()
        .unwrap()
}

#[test]
fn labels_of_the_real_traces_follow_the_poyo_rule_on_scipys_moments() {
    let Some(dir) = data() else { return };
    let f: ndarray::Array2<f32> = ndarray_npy::read_npy(dir.join("F.npy")).unwrap();
    let fneu: ndarray::Array2<f32> = ndarray_npy::read_npy(dir.join("Fneu.npy")).unwrap();
    let expected: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("expected_moments.json")).unwrap())
            .unwrap();
    let series = |k: &str| -> Vec<f64> {
        expected[k]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap())
            .collect()
    };
    let (skew, kurt) = (series("skew"), series("excess_kurtosis"));
    let (n_roi, n_frames) = f.dim();
    let rule = PoyoRule::default();
    let want: Vec<&str> = (0..n_roi)
        .map(|r| rule.label(skew[r], kurt[r]).unwrap().as_str())
        .collect();
    // The check means something only if the rule splits them and hysteresis (5 %) cannot hold
    // an earlier label: every ROI is outside the band around both thresholds.
    assert!(want.contains(&"predictable") && want.contains(&"unpredictable"));
    for r in 0..n_roi {
        let decided = if want[r] == "predictable" {
            skew[r] <= 3.51 * 0.95 && kurt[r] <= 22.62 * 0.95
        } else {
            skew[r] > 3.51 * 1.05 || kurt[r] > 22.62 * 1.05
        };
        assert!(decided, "roi {r} sits in the hysteresis band");
    }

    let mut dff = transform("dff", "dff", &["s2p"], "");
    let mut moments = transform("moments", "moments", &["dff"], "value = 'fc'");
    let mut pred = transform("predictability", "pred", &["moments", "dff"], "");
    // Traces as a Suite2p replay would send them: frame-major, 100 frames a batch.
    let schema = traces_schema("plane0", "30", &["f", "fneu"]);
    let mut out = TransformContext::detached("t");
    let mut table_frames = Vec::new();
    let mut feed_moments =
        |m: &mut TransformContext, pred: &mut Box<dyn Transform>, out: &mut TransformContext| {
            for (_, b) in m.batches.drain(..) {
                table_frames.push(col::<Int64Array>(&b, "frame_index").value(0));
                pred.process(&Input::new(0, "moments"), b, out).unwrap();
            }
        };
    for t0 in (0..n_frames).step_by(100) {
        let frames: Vec<(usize, usize)> = (t0..(t0 + 100).min(n_frames))
            .flat_map(|t| (0..n_roi).map(move |r| (t, r)))
            .collect();
        let cols: Vec<ArrayRef> = vec![
            Arc::new(Int64Array::from_iter_values(
                frames.iter().map(|x| x.0 as i64),
            )),
            Arc::new(Float64Array::from_iter_values(
                frames.iter().map(|x| x.0 as f64 / RATE),
            )),
            Arc::new(Int32Array::from_iter_values(
                frames.iter().map(|x| x.1 as i32),
            )),
            Arc::new(Float32Array::from_iter_values(
                frames.iter().map(|x| f[[x.1, x.0]]),
            )),
            Arc::new(Float32Array::from_iter_values(
                frames.iter().map(|x| fneu[[x.1, x.0]]),
            )),
        ];
        let batch = RecordBatch::try_new(schema.clone(), cols).unwrap();
        let mut d = TransformContext::detached("t");
        dff.process(&Input::new(0, "in"), batch, &mut d).unwrap();
        let mut m = TransformContext::detached("t");
        for (_, b) in d.out.batches {
            // The traces reach predictability before their moments, as through the daemon.
            pred.process(&Input::new(1, "dff"), b.clone(), &mut out)
                .unwrap();
            moments.process(&Input::new(0, "in"), b, &mut m).unwrap();
        }
        feed_moments(&mut m, &mut pred, &mut out);
    }
    let mut m = TransformContext::detached("t");
    moments.finish(&mut m).unwrap();
    feed_moments(&mut m, &mut pred, &mut out);
    pred.finish(&mut out).unwrap();

    // The neuron table: label changes, then the final row per unit.
    let tables: Vec<&RecordBatch> = out
        .batches
        .iter()
        .filter(|(p, _)| p.is_empty())
        .map(|(_, b)| b)
        .collect();
    let last = *tables.last().unwrap();
    assert_eq!(last.num_rows(), n_roi);
    assert_eq!(
        last.schema().metadata()["neurod.stream_id"],
        "plane0.dff.neurons"
    );
    let unit = col::<StringArray>(last, "unit");
    let label = col::<StringArray>(last, "label");
    let n = col::<Int64Array>(last, "n");
    let s = col::<Float64Array>(last, "skew");
    let k = col::<Float64Array>(last, "excess_kurtosis");
    let mut final_label = BTreeMap::new();
    for i in 0..n_roi {
        let r: usize = unit.value(i).parse().unwrap();
        assert_eq!(n.value(i), n_frames as i64);
        assert!(
            (s.value(i) - skew[r]).abs() < 1e-6 * skew[r].abs(),
            "roi {r} skew"
        );
        assert!(
            (k.value(i) - kurt[r]).abs() < 1e-6 * kurt[r].abs(),
            "roi {r} kurtosis"
        );
        assert_eq!(
            label.value(i),
            want[r],
            "roi {r}: skew {} kurtosis {}",
            skew[r],
            kurt[r]
        );
        final_label.insert(r as i32, want[r]);
    }
    // Label history: (moments frame of the change, label) per ROI.
    let mut history: BTreeMap<i32, Vec<(i64, String)>> = BTreeMap::new();
    for b in &tables[..tables.len() - 1] {
        let u = col::<StringArray>(b, "unit");
        let l = col::<StringArray>(b, "label");
        let since = col::<Int64Array>(b, "labelled_since_frame");
        for i in 0..b.num_rows() {
            history
                .entry(u.value(i).parse().unwrap())
                .or_default()
                .push((since.value(i), l.value(i).to_string()));
        }
    }
    // 600 samples = 20 s: first labelled by the table of frames ..=599.
    for h in history.values() {
        assert_eq!(h[0].0, 599);
    }
    // Each row went out with the labels of the first moments table covering its frame.
    let label_at = |roi: i32, frame: i64| -> &str {
        let table = table_frames
            .iter()
            .copied()
            .find(|&t| t >= frame)
            .unwrap_or(i64::MAX);
        history
            .get(&roi)
            .and_then(|h| h.iter().rev().find(|(since, _)| *since <= table))
            .map_or("unlabelled", |(_, l)| l.as_str())
    };
    let mut routed = 0;
    for (port, b) in &out.batches {
        if port.is_empty() {
            continue;
        }
        assert_eq!(
            b.schema().metadata()["neurod.stream_id"],
            format!("plane0.dff.{port}")
        );
        let t = col::<Int64Array>(b, "frame_index");
        let r = col::<Int32Array>(b, "roi");
        for i in 0..b.num_rows() {
            assert_eq!(
                port,
                label_at(r.value(i), t.value(i)),
                "roi {} frame {}",
                r.value(i),
                t.value(i)
            );
        }
        routed += b.num_rows();
    }
    assert_eq!(routed, n_roi * n_frames, "every trace row leaves once");
}
