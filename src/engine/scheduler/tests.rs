//! Schedulers against diffusers' own numbers (`scripts/diffusers_reference.py` → tests/fixtures/diffusers).

use super::*;

#[derive(Deserialize)]
struct Reference {
    x0_seed: u64,
    c_seed: u64,
    noise_seed: u64,
    cases: Vec<Case>,
}

#[derive(Deserialize)]
struct Case {
    scheduler: String,
    spacing: String,
    steps: usize,
    timesteps: Vec<f64>,
    sigmas: Option<Vec<f64>>,
    init_noise_sigma: f64,
    scaled_first: Vec<f32>,
    trajectory: Vec<Vec<f32>>,
}

fn fixture(name: &str) -> String {
    let path = format!("{}/{name}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn model_config() -> SchedulerConfig {
    serde_json::from_str(&fixture("models/tiny-sd/scheduler/scheduler_config.json"))
        .expect("config")
}

fn close(a: f64, b: f64, tol: f64) -> bool {
    (a - b).abs() <= tol * (1.0 + b.abs())
}

#[test]
fn every_scheduler_matches_diffusers() {
    let reference: Reference =
        serde_json::from_str(&fixture("tests/fixtures/diffusers/schedulers.json")).expect("json");
    assert_eq!(reference.cases.len(), 45);
    let x0 = Noise::new(reference.x0_seed).normals(64);
    let c = Noise::new(reference.c_seed).normals(64);
    for case in &reference.cases {
        let label = format!("{} {} {}", case.scheduler, case.spacing, case.steps);
        let kind: SchedulerKind = case.scheduler.parse().expect("kind");
        let cfg = SchedulerConfig {
            timestep_spacing: Some(case.spacing.clone()),
            ..model_config()
        };
        let mut s = build(kind, &cfg, case.steps).unwrap_or_else(|e| panic!("{label}: {e}"));
        let got: Vec<f64> = s.timesteps().iter().map(|&t| t as f64).collect();
        assert_eq!(
            got.len(),
            case.timesteps.len(),
            "{label}: {got:?} vs {:?}",
            case.timesteps
        );
        for (g, w) in got.iter().zip(&case.timesteps) {
            assert!(
                close(*g, *w, 1e-5),
                "{label} timesteps: {got:?} vs {:?}",
                case.timesteps
            );
        }
        if let Some(want) = &case.sigmas {
            let got = s.sigmas().expect("sigma-space scheduler");
            assert_eq!(got.len(), want.len(), "{label}");
            for (g, w) in got.iter().zip(want) {
                assert!(
                    close(*g as f64, *w, 1e-5),
                    "{label} sigmas: {got:?} vs {want:?}"
                );
            }
        }
        assert!(
            close(s.init_noise_sigma() as f64, case.init_noise_sigma, 1e-6),
            "{label} init sigma"
        );
        let mut scaled = x0.clone();
        s.scale_model_input(&mut scaled, 0);
        for (g, w) in scaled.iter().zip(&case.scaled_first) {
            assert!(
                close(*g as f64, *w as f64, 1e-6),
                "{label} scale_model_input"
            );
        }
        let mut x = x0.clone();
        let mut noise = Noise::new(reference.noise_seed);
        for (i, want) in case.trajectory.iter().enumerate() {
            let eps: Vec<f32> = x.iter().zip(&c).map(|(&x, &c)| 0.3 * x + c).collect();
            s.step(i, &eps, &mut x, &mut noise);
            let worst = x
                .iter()
                .zip(want)
                .map(|(g, w)| (g - w).abs())
                .fold(0.0f32, f32::max);
            assert!(worst < 1e-4, "{label} step {i}: max difference {worst}");
        }
    }
}

#[test]
fn names_parse_with_aliases_and_unknown_names_are_errors() {
    for kind in SchedulerKind::ALL {
        assert_eq!(kind.name().parse::<SchedulerKind>(), Ok(kind));
    }
    assert_eq!(
        "Euler-Ancestral".parse::<SchedulerKind>(),
        Ok(SchedulerKind::EulerA)
    );
    assert_eq!(
        "DPM++ 2M Karras".parse::<SchedulerKind>(),
        Ok(SchedulerKind::Dpmpp2mKarras)
    );
    assert!(matches!(
        "pndm".parse::<SchedulerKind>(),
        Err(SchedulerError::Unknown(_))
    ));
    assert_eq!(
        SchedulerKind::from_class_name("DDIMScheduler"),
        Some(SchedulerKind::Ddim)
    );
    assert_eq!(SchedulerKind::from_class_name("PNDMScheduler"), None);
}

#[test]
fn bad_configurations_and_step_counts_are_errors() {
    let cfg = model_config();
    assert!(matches!(
        build(SchedulerKind::Euler, &cfg, 0),
        Err(SchedulerError::Steps(_))
    ));
    assert!(matches!(
        build(SchedulerKind::Ddim, &cfg, 1001),
        Err(SchedulerError::Steps(_))
    ));
    assert!(matches!(
        build(SchedulerKind::Lcm, &cfg, 51),
        Err(SchedulerError::Steps(_))
    ));
    let v = SchedulerConfig {
        prediction_type: Some("v_prediction".into()),
        ..model_config()
    };
    assert!(matches!(
        build(SchedulerKind::Euler, &v, 4),
        Err(SchedulerError::Unsupported { .. })
    ));
    let odd = SchedulerConfig {
        timestep_spacing: Some("sideways".into()),
        ..model_config()
    };
    assert!(matches!(
        build(SchedulerKind::Ddim, &odd, 4),
        Err(SchedulerError::Unsupported { .. })
    ));
    let sched = SchedulerConfig {
        beta_schedule: Some("squaredcos_cap_v2".into()),
        ..model_config()
    };
    assert!(matches!(
        build(SchedulerKind::Euler, &sched, 4),
        Err(SchedulerError::Unsupported { .. })
    ));
}

#[test]
fn sd15_training_schedule_matches_published_values() {
    let t = Training::new(&model_config(), Spacing::Leading, 1).expect("training");
    let ac = &t.alphas_cumprod;
    for (i, want) in [
        (0, 0.99914998),
        (1, 0.99829602),
        (499, 0.27766943),
        (998, 0.0047167),
        (999, 0.0046601),
    ] {
        assert!(
            close(ac[i] as f64, want, 1e-4),
            "alphas_cumprod[{i}] = {}",
            ac[i]
        );
    }
}
