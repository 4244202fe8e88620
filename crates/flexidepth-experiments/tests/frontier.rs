//! `frontier::tune_threshold` on a tiny random model with routers: the threshold found for a layer budget uses at
//! least the budget's layers, and one bisection step higher uses fewer; the threshold found for a perplexity ratio
//! keeps the ratio, one step higher breaks it.

#[path = "../../flexidepth/tests/common/mod.rs"]
mod common;

use common::tiny::{config, depth_weights, routed_model, weights};
use flexidepth::config::Arch;
use flexidepth::depth::{FlexiDepth, SkipUnit};
use flexidepth_experiments::eval::{depth_quality, FullReference};
use flexidepth_experiments::frontier::{mean_layers, tune_threshold, TuneTarget};

const ROUTED: [usize; 2] = [1, 2];
const ITERS: usize = 10;

fn windows() -> Vec<Vec<u32>> {
    vec![
        vec![3, 17, 5, 39, 0, 22, 8, 11, 30, 2, 19, 4, 27, 9],
        vec![7, 1, 33, 12, 4, 25, 16, 21, 6, 38],
    ]
}

#[test]
fn tuned_thresholds_are_the_edge_of_their_target() {
    let c = config(Arch::Llama);
    let m = routed_model(&c, &weights(&c), &depth_weights(&c, &ROUTED, 0), &ROUTED);
    let w = windows();
    let reference = FullReference::new(&m, &w).unwrap();
    let step = 1.0 / (1u32 << ITERS) as f32;
    for unit in [SkipUnit::Layer, SkipUnit::Ffn] {
        let policy = FlexiDepth {
            unit: Some(unit),
            ..FlexiDepth::default()
        };
        let at = |t: f32| FlexiDepth {
            skip_threshold: Some(t),
            ..policy
        };
        let (full, none) = (
            mean_layers(&m, &w, &at(0.0)).unwrap(),
            mean_layers(&m, &w, &at(1.0)).unwrap(),
        );
        assert!(full > none + 0.5, "{unit:?}: {full} vs {none}");
        let want = 0.5 * (full + none);
        let t = tune_threshold(&m, &reference, policy, TuneTarget::Layers(want), ITERS).unwrap();
        assert_eq!(t.layers, mean_layers(&m, &w, &at(t.skip_threshold)).unwrap());
        assert!(t.layers >= want, "{unit:?}: {} < {want}", t.layers);
        assert!(
            mean_layers(&m, &w, &at(t.skip_threshold + step)).unwrap() < want,
            "{unit:?}"
        );

        let worst = depth_quality(&m, &w, &at(1.0)).unwrap().ppl_ratio;
        assert!(worst > 1.0, "{unit:?}: skipping every routed layer must cost ({worst})");
        let max = 1.0 + 0.5 * (worst - 1.0);
        let t = tune_threshold(&m, &reference, policy, TuneTarget::PplRatio(max), ITERS).unwrap();
        let ratio = t.ppl_ratio.unwrap();
        assert!(ratio <= max, "{unit:?}: {ratio} > {max}");
        assert_eq!(ratio, depth_quality(&m, &w, &at(t.skip_threshold)).unwrap().ppl_ratio);
        assert!(
            depth_quality(&m, &w, &at(t.skip_threshold + step)).unwrap().ppl_ratio > max,
            "{unit:?}"
        );
    }
}
