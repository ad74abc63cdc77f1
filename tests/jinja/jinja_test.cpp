// The Jinja interpreter against Jinja2's renders (tests/fixtures/chat_templates/make_renders.py:
// transformers' chat template environment) of published chat templates (Qwen2-VL / Qwen2.5-VL,
// Qwen3-VL-Instruct, Qwen2 ChatML) and edited variants, plus error reporting.
#include "jinja/jinja.h"

#include <gtest/gtest.h>

#include "core/core.h"

namespace {

using vla::jinja::Template;
using ojson = nlohmann::ordered_json;

const std::string kDir = std::string(VLA_SOURCE_DIR) + "/tests/fixtures/chat_templates/";

std::string render(const std::string& src, const ojson& ctx = ojson::object()) {
  return Template::parse(src, "t").render(ctx);
}

std::string error_of(const std::string& src, const ojson& ctx = ojson::object()) {
  try {
    render(src, ctx);
  } catch (const vla::Error& e) {
    return e.what();
  }
  return "(no error)";
}

TEST(Jinja, RendersPublishedAndEditedChatTemplatesLikeJinja2) {
  const auto ref = ojson::parse(vla::read_file(kDir + "renders.json"));
  ASSERT_GE(ref["cases"].size(), 50u);
  int rendered = 0, refused = 0;
  for (const auto& c : ref["cases"]) {
    const std::string name = c["template"].get<std::string>();
    SCOPED_TRACE(name + " / " + c["conversation"].get<std::string>() + " / " +
                 c["context"].dump().substr(0, 200));
    const auto tpl = Template::parse(vla::read_file(kDir + name + ".jinja"), name + ".jinja");
    if (c.contains("expected")) {
      EXPECT_EQ(tpl.render(c["context"]), c["expected"].get<std::string>());
      ++rendered;
    } else {
      EXPECT_THROW(tpl.render(c["context"]), vla::Error) << c["error"];
      ++refused;
    }
  }
  EXPECT_EQ(refused, 2);
  EXPECT_GT(rendered, 50);
}

TEST(Jinja, WhitespaceControlTrimBlocksAndLstripBlocks) {
  // trim_blocks: the newline after a block tag goes; lstrip_blocks: indentation before one goes.
  EXPECT_EQ(render("{% if true %}\n  a\n  {% endif %}\nb"), "  a\nb");
  EXPECT_EQ(render("x  {%- if true -%}  y  {%- endif -%}  z"), "xyz");
  EXPECT_EQ(render("{{ 'a' }}\n{{ 'b' }}"), "a\nb");  // variable tags keep the newline
  EXPECT_EQ(render("a {# note #}\nb"), "a b");
  EXPECT_EQ(render("  {%+ if true %}x{% endif +%}\ny"), "  x\ny");
  EXPECT_EQ(render("{% raw %}{{ not evaluated }}{% endraw %}"), "{{ not evaluated }}");
}

TEST(Jinja, LoopsScopesAndNamespaces) {
  EXPECT_EQ(
      render("{% for x in [1,2,3,4] %}{% if x == 3 %}{% break %}{% endif %}{{ x }}{% endfor %}"),
      "12");
  EXPECT_EQ(
      render("{% for x in [1,2,3] %}{% if x == 2 %}{% continue %}{% endif %}{{ x }}{% endfor %}"),
      "13");
  EXPECT_EQ(render("{% for x in [] %}a{% else %}empty{% endfor %}"), "empty");
  EXPECT_EQ(render("{% for k, v in {'a': 1, 'b': 2}.items() %}{{ k }}{{ v }}{{ ',' if not "
                   "loop.last }}{% endfor %}"),
            "a1,b2");
  // A plain `set` in a loop does not leak out of it; a namespace attribute does.
  EXPECT_EQ(render("{% set x = 1 %}{% set ns = namespace(y=1) %}{% for i in [5] %}{% set x = i %}"
                   "{% set ns.y = i %}{% endfor %}{{ x }} {{ ns.y }}"),
            "1 5");
  EXPECT_EQ(render("{% for m in ms %}{{ loop.index0 }}{{ loop.revindex }}{{ loop.previtem | "
                   "default('-') }}{% endfor %}",
                   {{"ms", {"a", "b"}}}),
            "02-11a");
  EXPECT_EQ(render("{% macro f(a, b='B') %}{{ a }}{{ b }}{% endmacro %}{{ f(1) }}{{ f(2, b=3) }}"),
            "1B23");
}

TEST(Jinja, ValuesPrintLikePython) {
  EXPECT_EQ(render("{{ none }} {{ true }} {{ 3 }} {{ 2.0 }} {{ 0.1 + 0.2 }} {{ [1, 'a', none] }}"),
            "None True 3 2.0 0.30000000000000004 [1, 'a', None]");
  EXPECT_EQ(render("{{ {'k': \"it's\"} }} {{ undefined_name }}|"), "{'k': \"it's\"} |");
  EXPECT_EQ(render("{{ x | tojson }}", {{"x", {{"b", 1}, {"a", "é\n"}}}}),
            "{\"b\": 1, \"a\": \"é\\n\"}");
}

TEST(Jinja, ErrorsNameTheTemplateAndLine) {
  EXPECT_NE(error_of("line 1\n{% if x %}\n{{ 1 + }}\n{% endif %}").find("t:3:"), std::string::npos);
  EXPECT_NE(error_of("a\n{% for x in y %}").find("t:2:"), std::string::npos);  // unclosed block
  const std::string raised =
      error_of("\n\n{{ raise_exception('Conversation roles must alternate') }}");
  EXPECT_NE(raised.find("t:3:"), std::string::npos) << raised;
  EXPECT_NE(raised.find("Conversation roles must alternate"), std::string::npos) << raised;
  EXPECT_NE(error_of("{{ 1 | no_such_filter }}").find("no filter named 'no_such_filter'"),
            std::string::npos);
  EXPECT_NE(error_of("{{ missing.attr }}").find("'missing' is undefined"), std::string::npos);
  EXPECT_NE(error_of("{{ 'a' + 1 }}").find("unsupported operand"), std::string::npos);
  EXPECT_NE(error_of("{% include 'x' %}").find("unsupported"), std::string::npos);
  EXPECT_NE(error_of("{{ 'unterminated }}").find("unterminated string"), std::string::npos);
}

TEST(Jinja, HostileTemplatesFailCleanly) {
  // Bad UTF-8 passes through as bytes; deep nesting and huge ranges give errors, not crashes.
  EXPECT_EQ(render("\xff{{ '\xfe' }}"), "\xff\xfe");
  EXPECT_THROW(render("{{ range(100000000) | length }}"), vla::Error);
  EXPECT_THROW(
      render("{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}"),
      vla::Error);
  EXPECT_THROW(render("{{ 'x' * 1000000000000 }}"), vla::Error);
  EXPECT_THROW(render("{% macro f() %}{{ f() }}{% endmacro %}{{ f() }}"), vla::Error);
  EXPECT_EQ(render("{{ 2 ** 62 }} {{ 2 ** 64 }} {{ 9223372036854775807 + 1 }}"),
            "4611686018427387904 1.8446744073709552e+19 9.223372036854776e+18");
  EXPECT_THROW(render("{% for %}"), vla::Error);
  // Found by the fuzzer: a bad \u escape threw std::invalid_argument out of the lexer.
  EXPECT_NE(error_of("{{ '\\user' }}").find("bad \\u escape"), std::string::npos);
  EXPECT_EQ(render("{{ '\\u00e9\\x41' }}"),
            "\xc3\xa9"
            "A");
  EXPECT_THROW(render("{{ 1e999999 }}"), vla::Error);
  EXPECT_THROW(render("{{ x.99999999999999999999999 }}"), vla::Error);
  EXPECT_THROW(render("{{ " + std::string(100000, '(') + "1" + std::string(100000, ')') + " }}"),
               vla::Error);
  EXPECT_THROW(render("{{ " + std::string(100000, '-') + "1 }}"), vla::Error);
  std::string nested;
  for (int i = 0; i < 5000; ++i) nested += "{% if true %}";
  EXPECT_THROW(render(nested), vla::Error);
  EXPECT_THROW(render("{{"), vla::Error);
  EXPECT_THROW(render("{% endfor %}"), vla::Error);
  EXPECT_THROW(Template::parse("x", "t").render(ojson::array()), vla::Error);
}

}  // namespace
