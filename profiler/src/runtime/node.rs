//! Node.js: the JavaScript functions V8 names in its perf map (`--perf-basic-prof`),
//! such as `JS:*predict /srv/app.js:20:17`.
//!
//! V8 lists one function several times, once per tier it compiled it in (`~`
//! interpreted, `^` baseline, `+` and `*` optimised): all of them become the one
//! [`SourceFunction`], so a function's time is not split by how hot it had become.

use crate::profile::{Language, SourceFunction};

/// What Node.js needs to name its JavaScript frames.
pub const PERF_MAP_HINT: &str = "start node with --perf-basic-prof (and \
     --interpreted-frames-native-stack to name interpreted functions too)";

/// Prefixes of the code V8 compiled from JavaScript: `JS:` since Node.js 20,
/// `LazyCompile:` and `Function:` before.
const JAVASCRIPT_PREFIXES: &[&str] = &["JS:", "LazyCompile:", "Function:"];

/// The JavaScript function a perf-map name names; `None` for V8's own code (`Builtin:`,
/// `Stub:`, regular expressions).
pub fn source_function(name: &str) -> Option<SourceFunction> {
    let rest = JAVASCRIPT_PREFIXES
        .iter()
        .find_map(|prefix| name.strip_prefix(prefix))?;
    let rest = rest.trim_start_matches(['~', '^', '+', '*']);
    let (function, location) = rest.split_once(' ').unwrap_or((rest, ""));
    // `file:line:column`; the file may itself hold colons (`node:internal/...`).
    let mut parts = location.rsplitn(3, ':');
    let (_column, line, file) = (parts.next(), parts.next(), parts.next());
    let (file, line) = match (file, line.and_then(|line| line.parse().ok())) {
        (Some(file), Some(line)) => (file, line),
        _ => (location, 0),
    };
    let qualname = if function.is_empty() {
        "(anonymous)".to_owned()
    } else {
        function.to_owned()
    };
    Some(SourceFunction {
        language: Language::JavaScript,
        qualname,
        file: file.to_owned(),
        line,
        module: None,
        entry: false,
        installed: file.starts_with("node:") || file.contains("/node_modules/"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_tier_of_a_function_is_the_same_function() {
        let optimised = source_function("JS:*predict /srv/app.js:20:17").unwrap();
        let baseline = source_function("JS:^predict /srv/app.js:20:17").unwrap();
        assert_eq!(optimised, baseline);
        assert_eq!(optimised.qualname, "predict");
        assert_eq!(
            (optimised.file.as_str(), optimised.line),
            ("/srv/app.js", 20)
        );
        assert!(!optimised.installed);
        assert_eq!(optimised.language, Language::JavaScript);
    }

    #[test]
    fn node_internals_are_installed_code_and_v8_code_is_no_function() {
        let internal = source_function("JS:^cpuUsage node:internal/process/per_thread:116:20");
        let internal = internal.unwrap();
        assert_eq!(internal.file, "node:internal/process/per_thread");
        assert!(internal.installed);
        assert_eq!(
            source_function("LazyCompile:~ /srv/app.js:1:1")
                .unwrap()
                .qualname,
            "(anonymous)"
        );
        assert_eq!(source_function("Builtin:RecordWriteSaveFP"), None);
    }
}
