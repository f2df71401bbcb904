//! Parameter sweeps: a batch's inputs generated from a template and the values of its
//! parameters, one unit per combination (the cartesian product), instead of a folder of files.
//!
//! `--template FILE` holds the input text with `{NAME}` where a parameter goes; each
//! `--sweep NAME=SPEC` gives one parameter's values: a list `a,b,c`, or a range `START..END` or
//! `START..END:STEP` (END excluded; integers, or decimals when any bound or step has a point).
//! A unit is named after its values, `x=1,y=0.5`.

use anyhow::{Context, bail};

/// The most units one sweep may generate (a batch's limit).
pub const MAX_UNITS: usize = 100_000;

/// The most input bytes one sweep may generate, all units together: they are built in memory
/// before the upload, and a sweep that big is a folder of files.
pub const MAX_TOTAL_BYTES: usize = 1 << 30;

/// The most decimal places a range's values are printed with: an `f64` holds no more.
const MAX_DECIMALS: usize = 15;

/// One parameter and its values, as text.
#[derive(Debug, PartialEq)]
struct Parameter {
    name: String,
    values: Vec<String>,
}

fn parse_number(text: &str, what: &str) -> anyhow::Result<f64> {
    let value: f64 = text
        .trim()
        .parse()
        .with_context(|| format!("{what} `{text}` is not a number"))?;
    if !value.is_finite() {
        bail!("{what} `{text}` is not a finite number");
    }
    Ok(value)
}

fn parse_parameter(spec: &str) -> anyhow::Result<Parameter> {
    let Some((name, values)) = spec.split_once('=') else {
        bail!("sweep `{spec}` is not NAME=VALUES");
    };
    let name = name.trim();
    if name.is_empty() || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
        bail!("sweep parameter name `{name}` must be letters, digits and `_`");
    }
    let values: Vec<String> = match values.split_once("..") {
        Some((start, rest)) => {
            let (end, step) = rest.split_once(':').unwrap_or((rest, "1"));
            let decimal = [start, end, step].iter().any(|t| t.contains('.'));
            let (start_n, end_n, step_n) = (
                parse_number(start, "range start")?,
                parse_number(end, "range end")?,
                parse_number(step, "range step")?,
            );
            if step_n <= 0.0 {
                bail!("sweep `{spec}`: the step must be above 0");
            }
            // Enough digits for the step and the start, none of float noise.
            let digits = [start, step]
                .iter()
                .map(|t| t.trim().split_once('.').map_or(0, |(_, f)| f.len()))
                .max()
                .unwrap_or(0);
            if digits > MAX_DECIMALS {
                bail!("sweep `{spec}` has more than {MAX_DECIMALS} decimal places");
            }
            let count = ((end_n - start_n) / step_n).ceil();
            if count > MAX_UNITS as f64 {
                bail!("sweep `{spec}` has more than {MAX_UNITS} values");
            }
            (0..count.max(0.0) as usize)
                .map(|i| {
                    let value = start_n + i as f64 * step_n;
                    if decimal {
                        format!("{value:.digits$}")
                    } else {
                        format!("{}", value as i64)
                    }
                })
                .collect()
        }
        None => values.split(',').map(|v| v.trim().to_string()).collect(),
    };
    if values.is_empty() || values.iter().any(String::is_empty) {
        bail!("sweep `{spec}` gives no value, or an empty one");
    }
    Ok(Parameter {
        name: name.to_string(),
        values,
    })
}

/// The inputs of a sweep: one `(unit name, input bytes)` per combination of the parameters'
/// values, the template's `{NAME}` replaced by each value.
pub fn inputs(template: &str, sweeps: &[String]) -> anyhow::Result<Vec<(String, Vec<u8>)>> {
    inputs_within(template, sweeps, MAX_TOTAL_BYTES)
}

fn inputs_within(
    template: &str,
    sweeps: &[String],
    max_bytes: usize,
) -> anyhow::Result<Vec<(String, Vec<u8>)>> {
    let parameters: Vec<Parameter> = sweeps
        .iter()
        .map(|s| parse_parameter(s))
        .collect::<anyhow::Result<_>>()?;
    for (i, parameter) in parameters.iter().enumerate() {
        if parameters[..i].iter().any(|p| p.name == parameter.name) {
            bail!("sweep parameter `{}` is given twice", parameter.name);
        }
        if !template.contains(&format!("{{{}}}", parameter.name)) {
            bail!(
                "the template has no `{{{}}}` for sweep parameter `{}`",
                parameter.name,
                parameter.name
            );
        }
    }
    let total = parameters
        .iter()
        .try_fold(1usize, |n, p| n.checked_mul(p.values.len()))
        .filter(|n| *n <= MAX_UNITS)
        .with_context(|| format!("the sweep makes more than {MAX_UNITS} units"))?;
    let mut units = Vec::with_capacity(total);
    let mut bytes = 0usize;
    for index in 0..total {
        // The combination numbered `index`, the last parameter changing fastest.
        let mut rest = index;
        let mut chosen = vec![""; parameters.len()];
        for (slot, parameter) in parameters.iter().enumerate().rev() {
            chosen[slot] = &parameter.values[rest % parameter.values.len()];
            rest /= parameter.values.len();
        }
        let input = substitute(template, &parameters, &chosen);
        bytes = bytes.saturating_add(input.len());
        if bytes > max_bytes {
            bail!(
                "the sweep makes more than {max_bytes} bytes of input: upload a folder of \
                 inputs instead"
            );
        }
        let name: Vec<String> = parameters
            .iter()
            .zip(&chosen)
            .map(|(parameter, value)| format!("{}={value}", parameter.name))
            .collect();
        units.push((name.join(","), input.into_bytes()));
    }
    Ok(units)
}

/// The template with each `{NAME}` of a parameter replaced by its chosen value, in one pass: a
/// value that itself holds `{OTHER}` is not replaced again.
fn substitute(template: &str, parameters: &[Parameter], chosen: &[&str]) -> String {
    let mut out = String::with_capacity(template.len());
    let mut rest = template;
    while let Some(open) = rest.find('{') {
        out.push_str(&rest[..open]);
        let after = &rest[open + 1..];
        let hit = after.find('}').and_then(|close| {
            let name = &after[..close];
            let slot = parameters.iter().position(|p| p.name == name)?;
            Some((slot, close))
        });
        match hit {
            Some((slot, close)) => {
                out.push_str(chosen[slot]);
                rest = &after[close + 1..];
            }
            None => {
                out.push('{');
                rest = after;
            }
        }
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(units: &[(String, Vec<u8>)]) -> Vec<&str> {
        units.iter().map(|(n, _)| n.as_str()).collect()
    }

    #[test]
    fn a_sweep_is_the_product_of_its_parameters() {
        let units = inputs("x {x} y {y}\n", &["x=0..3".into(), "y=a,b".into()]).unwrap();
        assert_eq!(
            names(&units),
            [
                "x=0,y=a", "x=0,y=b", "x=1,y=a", "x=1,y=b", "x=2,y=a", "x=2,y=b"
            ]
        );
        assert_eq!(units[3].1, b"x 1 y b\n");
    }

    #[test]
    fn decimal_ranges_have_clean_values() {
        let units = inputs("{z}", &["z=0..0.3:0.1".into()]).unwrap();
        assert_eq!(names(&units), ["z=0.0", "z=0.1", "z=0.2"]);
        let units = inputs("{z}", &["z=-1..1:0.5".into()]).unwrap();
        assert_eq!(names(&units), ["z=-1.0", "z=-0.5", "z=0.0", "z=0.5"]);
    }

    #[test]
    fn bad_sweeps_are_refused_by_name() {
        let refused = |template: &str, sweeps: &[&str]| {
            let sweeps: Vec<String> = sweeps.iter().map(|s| s.to_string()).collect();
            format!("{:#}", inputs(template, &sweeps).unwrap_err())
        };
        assert!(refused("{x}", &["x"]).contains("not NAME=VALUES"));
        assert!(refused("{x}", &["x=0..5:0"]).contains("step must be above 0"));
        assert!(refused("{x}", &["x=a..5"]).contains("range start `a` is not a number"));
        assert!(refused("{x}", &["x=1,,2"]).contains("empty"));
        assert!(refused("{x}", &["y=1,2"]).contains("no `{y}`"));
        assert!(refused("{x}", &["x=1", "x=2"]).contains("given twice"));
        assert!(refused("{x}{y}", &["x=0..1000", "y=0..1000"]).contains("more than 100000"));
        assert!(refused("{x-y}", &["x-y=1"]).contains("letters, digits"));
        let places = format!("x=0..1:0.{}1", "0".repeat(15));
        assert!(refused("{x}", &[&places]).contains("more than 15 decimal places"));
        let sweeps = ["x=0..100".to_string()];
        let error = inputs_within(&"{x}".repeat(10), &sweeps, 1000).unwrap_err();
        assert!(
            format!("{error:#}").contains("more than 1000 bytes"),
            "{error:#}"
        );
        assert_eq!(inputs_within("{x}", &sweeps, 1000).unwrap().len(), 100);
    }

    #[test]
    fn a_value_is_not_substituted_again() {
        let sweeps = ["x={y}".to_string(), "y=1".to_string()];
        let units = inputs("{x}-{y}-{z}", &sweeps).unwrap();
        assert_eq!(units[0].1, b"{y}-1-{z}");
    }
}
