use super::*;
use time::macros::datetime;

fn shipped() -> Campaign {
    load_file(Path::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/config/campaigns/mid-autumn.toml"
    )))
    .expect("the shipped campaign loads")
}

#[test]
fn the_shipped_mid_autumn_campaign_is_complete() {
    let c = shipped();
    for word in ["嫦娥", "玉兔", "月饼", "灯笼", "桂花", "月亮", "团圆"] {
        assert!(c.glossary.contains_key(word), "glossary lacks {word}");
    }
    assert!(c.keywords.iter().any(|k| k == "中秋") && c.keywords.iter().any(|k| k == "赏月"));
    assert!(
        !c.replies.welcome.is_empty()
            && !c.replies.not_started.is_empty()
            && !c.replies.ended.is_empty()
    );
    let again = Campaign::from_toml(&c.to_toml(), Path::new("export.toml")).expect("round trip");
    assert_eq!(again, c);
}

#[test]
fn rendering_translates_the_subject_into_the_template() {
    let c = shipped();
    let prompt = c.render("嫦娥抱玉兔");
    assert!(
        prompt.starts_with(
            "a festive Mid-Autumn Festival painting of Chang'e the moon goddess in flowing silk robes holding the white jade rabbit,"
        ),
        "{prompt}"
    );
    assert!(
        c.render("")
            .contains("a family reunion under the full moon")
    );
    assert!(
        c.render("  ")
            .contains("a family reunion under the full moon")
    );
    assert!(
        c.render("桂花树下的猫")
            .contains("an osmanthus tree under a cat")
    );
    assert!(c.render("a cat and 月饼").contains("a cat and mooncakes"));
    assert!(
        c.render("嫦娥奔月").contains("Chang'e flying to the moon"),
        "longest entry first"
    );
}

#[test]
fn glossary_edge_cases() {
    let g: BTreeMap<String, String> = [("月", "moon"), ("月饼", "mooncake"), ("", "never")]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    assert_eq!(translate("月饼月", &g), "mooncake moon");
    assert_eq!(translate("", &g), "");
    assert_eq!(translate("无关", &g), "无关");
    assert_eq!(translate("大月亮", &g), "大 moon 亮");
    assert_eq!(translate("🌕月🌕", &g), "🌕 moon 🌕");
}

#[test]
fn the_window_is_read_in_its_own_offset() {
    let c = shipped();
    assert_eq!(
        c.window(datetime!(2027-09-07 15:59:59 UTC)),
        Window::NotStarted
    );
    assert_eq!(
        c.window(datetime!(2027-09-07 16:00:00 UTC)),
        Window::Open,
        "midnight in Shanghai"
    );
    assert_eq!(c.window(datetime!(2027-09-21 15:59:59 UTC)), Window::Open);
    assert_eq!(c.window(datetime!(2027-09-21 16:00:00 UTC)), Window::Ended);
    let set = Campaigns::new(vec![c]);
    assert!(set.active(datetime!(2027-09-10 00:00 UTC)).is_some());
    assert!(set.active(datetime!(2026-11-25 00:00 UTC)).is_none());
    assert_eq!(
        set.by_keyword("赏月").map(|c| c.name.as_str()),
        Some("mid-autumn")
    );
    assert_eq!(
        set.by_menu_key("MID_AUTUMN").map(|c| c.name.as_str()),
        Some("mid-autumn")
    );
    assert!(set.by_keyword("春节").is_none());
}

#[test]
fn bad_definitions_are_refused_with_the_reason() {
    let base = shipped().to_toml();
    for (from, to, reason) in [
        ("{subject}", "{thing}", "{subject}"),
        (
            "scheduler = \"euler_a\"",
            "scheduler = \"pndm\"",
            "scheduler",
        ),
        ("width = 512", "width = 500", "multiples of 8"),
        (
            "starts_at = \"2027-09-08T00:00:00+08:00\"",
            "starts_at = \"next week\"",
            "RFC 3339",
        ),
        (
            "ends_at = \"2027-09-22T00:00:00+08:00\"",
            "ends_at = \"2027-09-01T00:00:00+08:00\"",
            "after",
        ),
        ("guidance = 7.5", "guidance = 99.0", "guidance"),
        ("strength = 0.6", "strength = 1.5", "strength"),
        ("strength = 0.6", "strength = 0.01", "runs none"),
        ("width = 0", "width = 100", "[photo] width"),
        ("strength = 0.6", "strength = 0.6\nsurprise = 1", "surprise"),
    ] {
        assert!(base.contains(from), "{from}");
        let error = Campaign::from_toml(&base.replace(from, to), Path::new("x.toml"))
            .expect_err("refused")
            .to_string();
        assert!(error.contains(reason), "{error}");
    }
    for broken in ["", "name = 1", "[[[", "name = \"x\"\nsurprise = true"] {
        assert!(
            Campaign::from_toml(broken, Path::new("y.toml")).is_err(),
            "{broken:?}"
        );
    }
    let huge = format!("name = \"{}\"", "x".repeat(100_000));
    assert!(Campaign::from_toml(&huge, Path::new("z.toml")).is_err());
}
