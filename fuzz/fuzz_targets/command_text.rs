//! A follower's text through everything that reads it before admission: the command grammar (with the shipped
//! campaign's keywords), the campaign's glossary and template, the content filter, and the plan. Nothing may panic.
#![no_main]

use std::path::Path;
use std::sync::LazyLock;

use huabi::campaign::{self, Campaigns};
use huabi::channel::InboundKind;
use huabi::command::{self, Catalog};
use huabi::config::Settings;
use huabi::filter::{self, ContentFilter};
use libfuzzer_sys::fuzz_target;

static SETTINGS: LazyLock<Settings> =
    LazyLock::new(|| Settings::load_from(Default::default()).expect("settings"));

static CATALOG: LazyLock<Catalog> = LazyLock::new(|| {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let campaigns = campaign::load_dir(&root.join("config/campaigns")).expect("campaigns");
    let words = filter::read_word_file(&root.join("config/filter-words.txt")).expect("words");
    Catalog::new(
        &SETTINGS,
        Campaigns::new(campaigns),
        ContentFilter::new(words).expect("filter"),
    )
});

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let during = time::macros::datetime!(2027-09-10 12:00 +08:00);
    let _ = command::plan(
        &InboundKind::Text {
            content: text.to_string(),
        },
        &SETTINGS,
        &CATALOG,
        during,
    );
    for c in CATALOG.campaigns.all() {
        let _ = c.render(text);
    }
    let _ = CATALOG.filter.find(text);
});
