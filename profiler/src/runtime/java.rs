//! The JVM: the Java methods HotSpot names in its perf map (`jcmd PID
//! Compiler.perfmap`), such as `double Phases.predict(int)`.
//!
//! The map is a snapshot of the methods compiled when it was written; interpreted
//! methods run in the one `Interpreter` blob, and show as that.

use crate::profile::{Language, SourceFunction};

/// What the JVM needs to name its compiled methods.
pub const PERF_MAP_HINT: &str = "run `jcmd PID Compiler.perfmap` (JDK 17 or later) once the \
     service has warmed up, and again after new code is compiled; start the JVM with \
     -XX:+PreserveFramePointer for whole stacks";

/// The Java method a perf-map name names; `None` for the JVM's own code (`Interpreter`,
/// `StubRoutines`, adapters).
pub fn source_function(name: &str) -> Option<SourceFunction> {
    // `[return type ]package.Class.method(argument types)`.
    let (head, arguments) = name.split_once('(')?;
    if !arguments.ends_with(')') {
        return None;
    }
    let method = head.rsplit(' ').next()?;
    let (class, _) = method.rsplit_once('.')?;
    let valid = |part: &str| {
        !part.is_empty()
            && part
                .chars()
                .all(|c| c.is_alphanumeric() || matches!(c, '_' | '$' | '<' | '>'))
    };
    if !method.split('.').all(valid) {
        return None;
    }
    Some(SourceFunction {
        language: Language::Java,
        qualname: method.to_owned(),
        file: String::new(),
        line: 0,
        module: Some(class.to_owned()),
        entry: false,
        installed: ["java.", "javax.", "jdk.", "sun.", "com.sun."]
            .iter()
            .any(|prefix| method.starts_with(prefix)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn methods_are_named_by_class_and_method() {
        let predict = source_function("double Phases.predict(int)").unwrap();
        assert_eq!(predict.qualname, "Phases.predict");
        assert!(predict.is_named("predict"));
        assert!(!predict.installed);
        let hash = source_function("int java.lang.String.hashCode()").unwrap();
        assert_eq!(hash.module.as_deref(), Some("java.lang.String"));
        assert!(hash.installed);
    }

    #[test]
    fn the_jvm_s_own_code_is_no_method() {
        for name in ["Interpreter", "StubRoutines (1)", "I2C/C2I adapters(0xb)"] {
            assert_eq!(source_function(name), None, "{name}");
        }
    }
}
