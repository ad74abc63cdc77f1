// vla jinja: a Jinja2 interpreter for Hugging Face chat templates.
//
// Written here because no Debian package provides a C++ Jinja engine. It covers what published
// chat templates use, rendered the way transformers' apply_chat_template does
// (transformers/utils/chat_template_utils.py, _compile_jinja_template: Jinja2's
// ImmutableSandboxedEnvironment with trim_blocks, lstrip_blocks and the loopcontrols extension,
// a `tojson` filter that is json.dumps(ensure_ascii=False, ...), and the globals
// `raise_exception` and `strftime_now`):
//   - text, {{ expressions }}, {% statements %}, {# comments #}, `-` / `+` whitespace control,
//     {% raw %};
//   - statements: if / elif / else, for (tuple targets, `if` filter, else, loop.index, index0,
//     revindex, revindex0, first, last, length, previtem, nextitem), break / continue, set
//     (names, `ns.attr`, tuples, block set), macro (positional, keyword and default
//     arguments), generation (transformers' assistant-mask block: rendered as its body);
//   - expressions: literals (strings with Python escapes, ints, floats, true/false/none, lists,
//     tuples, dicts), `.attr` and `[key]` (Jinja's getattr-then-getitem order), Python slices
//     including negative steps, calls with keyword arguments, `x if c else y`, or / and / not,
//     comparisons, in / not in, `is [not] test`, + - * / // % ** ~, filters;
//   - tests: defined, undefined, none, boolean, true, false, integer, float, number, string,
//     mapping, iterable, sequence, callable, even, odd, divisibleby, eq / equalto / ==, ne / !=,
//     lt / <, le / <=, gt / >, ge / >=, in, sameas, lower, upper;
//   - filters: abs, capitalize, count, default / d, first, float, indent, int, items, join,
//     last, length, list, lower, map, max, min, reject, rejectattr, replace, reverse, round,
//     safe, select, selectattr, sort, string, sum, title, tojson, trim, unique, upper,
//     wordcount;
//   - Python methods on values: str (strip, lstrip, rstrip, split, splitlines, startswith,
//     endswith, upper, lower, title, capitalize, replace, find, count, join, isdigit, isspace),
//     dict (items, keys, values, get), nothing that mutates (the sandbox forbids it too);
//   - globals: namespace, range, dict, raise_exception, strftime_now.
// Values print like Python's str() (None, True, 1.0, ['a', 1]). Undefined names print as ""
// and are false, as in Jinja2's default Undefined; using an attribute of one is an error.
//
// Errors (syntax, unknown filter or test, type errors, raise_exception) are vla::Error whose
// message starts with "<template name>:<line>: ".
#pragma once

#include <memory>
#include <nlohmann/json.hpp>
#include <string>

namespace vla::jinja {

namespace detail {
struct Program;
}

class Template {
 public:
  // Parses `source`; `name` is used in error messages (e.g. "ckpt/chat_template.jinja").
  // Throws vla::Error "<name>:<line>: <what>" on a syntax error.
  static Template parse(const std::string& source, const std::string& name);

  // Renders with `context` (a JSON object: its keys become template variables; key order is
  // kept, as Python dicts keep it, for `tojson` and `items()`). Throws vla::Error
  // "<name>:<line>: <what>" on an evaluation error or a raise_exception() call.
  std::string render(const nlohmann::ordered_json& context) const;

  const std::string& name() const;

 private:
  std::shared_ptr<const detail::Program> program_;
};

}  // namespace vla::jinja
