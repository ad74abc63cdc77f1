// Jinja lexer and parser: template text -> syntax tree (ast.h). Whitespace handling follows
// Jinja2 with trim_blocks and lstrip_blocks on, as transformers configures it.
#include <algorithm>
#include <cctype>
#include <set>

#include "core/core.h"
#include "jinja/ast.h"

namespace vla::jinja::detail {
namespace {

struct Token {
  enum class Kind {
    kText,
    kVarBegin,
    kVarEnd,
    kBlockBegin,
    kBlockEnd,
    kName,
    kString,
    kInt,
    kFloat,
    kOp,
    kEnd
  };
  Kind kind = Kind::kEnd;
  std::string text;
  int line = 0;
};

// Whitespace control: `-` removes all whitespace on its side.
void strip_leading_space(std::string& s) {
  size_t k = 0;
  while (k < s.size() && is_space(s[k])) ++k;
  s.erase(0, k);
}
void strip_trailing_space(std::string& s) {
  while (!s.empty() && is_space(s.back())) s.pop_back();
}
bool is_name_start(char c) { return std::isalpha(static_cast<unsigned char>(c)) || c == '_'; }
bool is_name_char(char c) { return std::isalnum(static_cast<unsigned char>(c)) || c == '_'; }

class Lexer {
 public:
  Lexer(const std::string& src, const std::string& name) : src_(src), name_(name) {
    for (size_t i = 0; i < src_.size(); ++i)
      if (src_[i] == '\n') newlines_.push_back(i);
  }

  std::vector<Token> run() {
    size_t pos = 0;
    bool strip_next = false, trim_next = false;
    while (pos <= src_.size()) {
      const size_t t = find_tag(pos);
      std::string text = src_.substr(pos, t - pos);
      // The tag's side first (positions are the source's), then the previous tag's side.
      if (t < src_.size()) {
        const char kind = src_[t + 1];
        const char mark = t + 2 < src_.size() ? src_[t + 2] : '\0';
        if (mark == '-') {
          strip_trailing_space(text);
        } else if ((kind == '%' || kind == '#') && mark != '+') {
          // lstrip_blocks: spaces and tabs from the start of the line to the tag.
          size_t k = t;
          while (k > pos && (src_[k - 1] == ' ' || src_[k - 1] == '\t')) --k;
          if (k == 0 || src_[k - 1] == '\n') text.erase(k - pos);
        }
      }
      if (strip_next) {
        strip_leading_space(text);
      } else if (trim_next && !text.empty()) {
        if (text[0] == '\n')
          text.erase(0, 1);
        else if (text.size() > 1 && text[0] == '\r' && text[1] == '\n')
          text.erase(0, 2);
      }
      strip_next = trim_next = false;
      if (!text.empty()) push(Token::Kind::kText, text, pos);
      if (t >= src_.size()) break;
      const char kind = src_[t + 1];
      size_t p = t + 2;
      if (p < src_.size() && (src_[p] == '-' || src_[p] == '+')) ++p;
      bool strip_after = false, plus_after = false;
      if (kind == '#') {
        const size_t e = src_.find("#}", p);
        if (e == std::string::npos) fail(t, "unclosed comment");
        strip_after = e > p && src_[e - 1] == '-';
        plus_after = e > p && src_[e - 1] == '+';
        pos = e + 2;
        strip_next = strip_after;
        trim_next = !strip_after && !plus_after;
        continue;
      }
      if (kind == '%' && raw_block(t, p, pos, strip_next, trim_next)) continue;
      push(kind == '{' ? Token::Kind::kVarBegin : Token::Kind::kBlockBegin, "", t);
      pos = lex_inside(p, kind == '{', strip_after, plus_after);
      push(kind == '{' ? Token::Kind::kVarEnd : Token::Kind::kBlockEnd, "", pos - 2);
      strip_next = strip_after;
      trim_next = kind == '%' && !strip_after && !plus_after;
    }
    push(Token::Kind::kEnd, "", src_.size());
    return std::move(tokens_);
  }

  int line_at(size_t pos) const {
    return static_cast<int>(std::lower_bound(newlines_.begin(), newlines_.end(), pos) -
                            newlines_.begin()) +
           1;
  }

 private:
  [[noreturn]] void fail(size_t pos, const std::string& what) const {
    throw Error(str_cat(name_, ":", line_at(pos), ": syntax error: ", what));
  }
  void push(Token::Kind k, std::string text, size_t pos) {
    tokens_.push_back({k, std::move(text), line_at(pos)});
  }
  size_t find_tag(size_t from) const {
    for (size_t i = from; i + 1 < src_.size(); ++i)
      if (src_[i] == '{' && (src_[i + 1] == '{' || src_[i + 1] == '%' || src_[i + 1] == '#'))
        return i;
    return src_.size();
  }

  // {% raw %} ... {% endraw %}: the text in between, untouched.
  bool raw_block(size_t t, size_t p, size_t& pos, bool& strip_next, bool& trim_next) {
    size_t q = p;
    while (q < src_.size() && is_space(src_[q])) ++q;
    if (src_.compare(q, 3, "raw") != 0 || (q + 3 < src_.size() && is_name_char(src_[q + 3])))
      return false;
    q += 3;
    while (q < src_.size() && is_space(src_[q])) ++q;
    const bool strip_open = q < src_.size() && src_[q] == '-';
    if (q < src_.size() && (src_[q] == '-' || src_[q] == '+')) ++q;
    if (src_.compare(q, 2, "%}") != 0) fail(t, "expected %} after raw");
    size_t body = q + 2;
    for (size_t s = body; s + 1 < src_.size(); ++s) {
      if (src_[s] != '{' || src_[s + 1] != '%') continue;
      size_t r = s + 2;
      const bool strip_before = r < src_.size() && src_[r] == '-';
      if (r < src_.size() && (src_[r] == '-' || src_[r] == '+')) ++r;
      while (r < src_.size() && is_space(src_[r])) ++r;
      if (src_.compare(r, 6, "endraw") != 0) continue;
      r += 6;
      while (r < src_.size() && is_space(src_[r])) ++r;
      const bool strip_after = r < src_.size() && src_[r] == '-';
      const bool plus_after = r < src_.size() && src_[r] == '+';
      if (strip_after || plus_after) ++r;
      if (src_.compare(r, 2, "%}") != 0) fail(s, "expected %} after endraw");
      std::string text = src_.substr(body, s - body);
      if (strip_open) {
        strip_leading_space(text);
      }
      if (strip_before) strip_trailing_space(text);
      if (!text.empty()) push(Token::Kind::kText, text, body);
      pos = r + 2;
      strip_next = strip_after;
      trim_next = !strip_after && !plus_after;
      return true;
    }
    fail(t, "{% raw %} without {% endraw %}");
  }

  // Tokens of one {{ }} or {% %}; returns the position after the closing delimiter.
  size_t lex_inside(size_t p, bool var, bool& strip_after, bool& plus_after) {
    int depth = 0;  // brackets opened inside the tag: a '}' there closes a dict, not the tag
    const size_t open = p;
    while (true) {
      while (p < src_.size() && is_space(src_[p])) ++p;
      if (p >= src_.size()) fail(open, var ? "unclosed {{" : "unclosed {%");
      const char c = src_[p];
      const char close = var ? '}' : '%';
      if (depth == 0) {
        if ((c == '-' || c == '+') && p + 2 < src_.size() && src_[p + 1] == close &&
            src_[p + 2] == '}') {
          strip_after = c == '-';
          plus_after = c == '+';
          return p + 3;
        }
        if (c == close && p + 1 < src_.size() && src_[p + 1] == '}') return p + 2;
      }
      if (is_name_start(c)) {
        size_t e = p;
        while (e < src_.size() && is_name_char(src_[e])) ++e;
        push(Token::Kind::kName, src_.substr(p, e - p), p);
        p = e;
      } else if (std::isdigit(static_cast<unsigned char>(c))) {
        size_t e = p;
        bool real = false;
        while (e < src_.size() &&
               (std::isdigit(static_cast<unsigned char>(src_[e])) || src_[e] == '_'))
          ++e;
        if (e + 1 < src_.size() && src_[e] == '.' &&
            std::isdigit(static_cast<unsigned char>(src_[e + 1]))) {
          real = true;
          ++e;
          while (e < src_.size() &&
                 (std::isdigit(static_cast<unsigned char>(src_[e])) || src_[e] == '_'))
            ++e;
        }
        if (e < src_.size() && (src_[e] == 'e' || src_[e] == 'E')) {
          size_t x = e + 1;
          if (x < src_.size() && (src_[x] == '+' || src_[x] == '-')) ++x;
          if (x < src_.size() && std::isdigit(static_cast<unsigned char>(src_[x]))) {
            real = true;
            e = x;
            while (e < src_.size() && std::isdigit(static_cast<unsigned char>(src_[e]))) ++e;
          }
        }
        std::string num = src_.substr(p, e - p);
        num.erase(std::remove(num.begin(), num.end(), '_'), num.end());
        push(real ? Token::Kind::kFloat : Token::Kind::kInt, num, p);
        p = e;
      } else if (c == '\'' || c == '"') {
        p = lex_string(p);
      } else {
        static const char* kOps[] = {"**", "//", "==", "!=", "<=", ">=", "+", "-", "*",
                                     "/",  "%",  "~",  "<",  ">",  "=",  "(", ")", "[",
                                     "]",  "{",  "}",  ",",  ".",  ":",  "|"};
        bool found = false;
        for (const char* op : kOps) {
          const size_t n = std::char_traits<char>::length(op);
          if (src_.compare(p, n, op) == 0) {
            if (op[0] == '(' || op[0] == '[' || op[0] == '{') ++depth;
            if ((op[0] == ')' || op[0] == ']' || op[0] == '}') && n == 1) --depth;
            push(Token::Kind::kOp, op, p);
            p += n;
            found = true;
            break;
          }
        }
        if (!found) fail(p, str_cat("unexpected character '", std::string(1, c), "'"));
      }
    }
  }

  // A string literal with Python's escapes (Jinja decodes them with unicode-escape).
  size_t lex_string(size_t p) {
    const char quote = src_[p];
    std::string out;
    size_t i = p + 1;
    while (true) {
      if (i >= src_.size()) fail(p, "unterminated string");
      const char c = src_[i];
      if (c == quote) break;
      if (c != '\\' || i + 1 >= src_.size()) {
        out.push_back(c);
        ++i;
        continue;
      }
      const char e = src_[i + 1];
      i += 2;
      auto hex = [&](int n) {
        if (i + static_cast<size_t>(n) > src_.size()) fail(p, "truncated escape in string");
        uint32_t v = 0;
        for (int k = 0; k < n; ++k) {
          const char h = src_[i + static_cast<size_t>(k)];
          if (!std::isxdigit(static_cast<unsigned char>(h)))
            fail(p, str_cat("bad \\", std::string(1, e), " escape in string"));
          v = v * 16 +
              static_cast<uint32_t>(std::isdigit(static_cast<unsigned char>(h))
                                        ? h - '0'
                                        : std::tolower(static_cast<unsigned char>(h)) - 'a' + 10);
        }
        if (v > 0x10FFFF) fail(p, "escape beyond U+10FFFF in string");
        i += static_cast<size_t>(n);
        append_utf8(out, static_cast<char32_t>(v));
      };
      switch (e) {
        case 'n':
          out.push_back('\n');
          break;
        case 't':
          out.push_back('\t');
          break;
        case 'r':
          out.push_back('\r');
          break;
        case 'b':
          out.push_back('\b');
          break;
        case 'f':
          out.push_back('\f');
          break;
        case 'v':
          out.push_back('\v');
          break;
        case 'a':
          out.push_back('\a');
          break;
        case '0':
          out.push_back('\0');
          break;
        case '\\':
          out.push_back('\\');
          break;
        case '\'':
          out.push_back('\'');
          break;
        case '"':
          out.push_back('"');
          break;
        case '\n':
          break;  // line continuation
        case 'x':
          hex(2);
          break;
        case 'u':
          hex(4);
          break;
        case 'U':
          hex(8);
          break;
        default:
          out.push_back('\\');
          out.push_back(e);
      }
    }
    push(Token::Kind::kString, out, p);
    return i + 1;
  }

  const std::string& src_;
  const std::string& name_;
  std::vector<size_t> newlines_;
  std::vector<Token> tokens_;
};

class Parser {
 public:
  Parser(std::vector<Token> tokens, const std::string& name) : t_(std::move(tokens)), name_(name) {}

  Body parse_template() {
    std::string end;
    Body b = parse_body({}, end);
    return b;
  }

 private:
  [[noreturn]] void fail(const std::string& what) const {
    throw Error(str_cat(name_, ":", cur().line, ": syntax error: ", what));
  }
  const Token& cur() const { return t_[i_]; }
  const Token& peek(size_t k = 1) const { return t_[std::min(i_ + k, t_.size() - 1)]; }
  bool is_op(const char* op) const { return cur().kind == Token::Kind::kOp && cur().text == op; }
  bool is_name(const char* n) const { return cur().kind == Token::Kind::kName && cur().text == n; }
  void expect_op(const char* op) {
    if (!is_op(op)) fail(str_cat("expected '", op, "', got '", describe(cur()), "'"));
    ++i_;
  }
  void expect_block_end() {
    if (cur().kind != Token::Kind::kBlockEnd)
      fail(str_cat("expected end of statement block, got '", describe(cur()), "'"));
    ++i_;
  }
  std::string expect_name() {
    if (cur().kind != Token::Kind::kName)
      fail(str_cat("expected a name, got '", describe(cur()), "'"));
    return t_[i_++].text;
  }
  static std::string describe(const Token& t) {
    switch (t.kind) {
      case Token::Kind::kVarEnd:
        return "}}";
      case Token::Kind::kBlockEnd:
        return "%}";
      case Token::Kind::kEnd:
        return "end of template";
      case Token::Kind::kText:
        return "text";
      default:
        return t.text;
    }
  }

  // Statements until one of `ends` (a block keyword); `end` receives it ("" at end of input).
  Body parse_body(const std::set<std::string>& ends, std::string& end) {
    DepthGuard guard(*this);
    Body body;
    while (true) {
      const Token& tk = cur();
      if (tk.kind == Token::Kind::kEnd) {
        if (!ends.empty())
          fail(str_cat("unexpected end of template; expected one of: ", join_set(ends)));
        end.clear();
        return body;
      }
      if (tk.kind == Token::Kind::kText) {
        auto n = std::make_shared<Node>();
        n->kind = Node::Kind::kText;
        n->line = tk.line;
        n->text = tk.text;
        body.push_back(n);
        ++i_;
        continue;
      }
      if (tk.kind == Token::Kind::kVarBegin) {
        ++i_;
        auto n = std::make_shared<Node>();
        n->kind = Node::Kind::kOutput;
        n->line = tk.line;
        n->expr = parse_expression();
        if (cur().kind != Token::Kind::kVarEnd)
          fail(str_cat("expected '}}', got '", describe(cur()), "'"));
        ++i_;
        body.push_back(n);
        continue;
      }
      if (tk.kind != Token::Kind::kBlockBegin) fail(str_cat("unexpected '", describe(tk), "'"));
      ++i_;
      const int line = cur().line;
      const std::string kw = expect_name();
      if (ends.count(kw)) {
        end = kw;
        return body;
      }
      if (kw == "if") {
        body.push_back(parse_if(line));
      } else if (kw == "for") {
        body.push_back(parse_for(line));
      } else if (kw == "set") {
        body.push_back(parse_set(line));
      } else if (kw == "macro") {
        body.push_back(parse_macro(line));
      } else if (kw == "break" || kw == "continue") {
        expect_block_end();
        auto n = std::make_shared<Node>();
        n->kind = kw == "break" ? Node::Kind::kBreak : Node::Kind::kContinue;
        n->line = line;
        body.push_back(n);
      } else if (kw == "generation") {  // transformers' assistant-mask marker: its body
        expect_block_end();
        std::string e;
        Body inner = parse_body({"endgeneration"}, e);
        expect_block_end();
        body.insert(body.end(), inner.begin(), inner.end());
      } else {
        throw Error(
            str_cat(name_, ":", line, ": unsupported or unexpected statement '", kw, "'",
                    ends.empty() ? "" : str_cat(" (expected one of: ", join_set(ends), ")")));
      }
    }
  }
  static std::string join_set(const std::set<std::string>& s) {
    std::string out;
    for (const auto& x : s) out += (out.empty() ? "" : ", ") + x;
    return out;
  }

  std::shared_ptr<Node> parse_if(int line) {
    auto n = std::make_shared<Node>();
    n->kind = Node::Kind::kIf;
    n->line = line;
    n->conditions.push_back(parse_expression());
    expect_block_end();
    while (true) {
      std::string end;
      Body b = parse_body({"elif", "else", "endif"}, end);
      n->bodies.push_back(std::move(b));
      if (end == "elif") {
        n->conditions.push_back(parse_expression());
        expect_block_end();
      } else if (end == "else") {
        expect_block_end();
        std::string e2;
        n->else_body = parse_body({"endif"}, e2);
        expect_block_end();
        return n;
      } else {
        expect_block_end();
        return n;
      }
    }
  }

  std::shared_ptr<Node> parse_for(int line) {
    auto n = std::make_shared<Node>();
    n->kind = Node::Kind::kFor;
    n->line = line;
    bool paren = false;
    if (is_op("(")) {
      paren = true;
      ++i_;
    }
    n->targets.push_back(expect_name());
    while (is_op(",")) {
      ++i_;
      n->targets.push_back(expect_name());
    }
    if (paren) expect_op(")");
    if (!is_name("in")) fail(str_cat("expected 'in' in for loop, got '", describe(cur()), "'"));
    ++i_;
    n->expr = parse_tuple(/*with_condexpr=*/false);
    if (is_name("if")) {
      ++i_;
      n->filter = parse_expression();
    }
    if (is_name("recursive")) fail("recursive for loops are not supported");
    expect_block_end();
    std::string end;
    n->body = parse_body({"else", "endfor"}, end);
    if (end == "else") {
      expect_block_end();
      std::string e2;
      n->else_body = parse_body({"endfor"}, e2);
    }
    expect_block_end();
    return n;
  }

  std::shared_ptr<Node> parse_set(int line) {
    auto n = std::make_shared<Node>();
    n->kind = Node::Kind::kSet;
    n->line = line;
    n->targets.push_back(expect_name());
    if (is_op(".")) {
      ++i_;
      n->targets.push_back(expect_name());
      n->attr_target = true;
    } else {
      while (is_op(",")) {
        ++i_;
        n->targets.push_back(expect_name());
      }
    }
    if (is_op("=")) {
      ++i_;
      n->expr = parse_tuple(/*with_condexpr=*/true);
      expect_block_end();
      return n;
    }
    if (n->attr_target || n->targets.size() != 1) fail("expected '=' in set");
    expect_block_end();
    n->block_set = true;
    std::string end;
    n->body = parse_body({"endset"}, end);
    expect_block_end();
    return n;
  }

  std::shared_ptr<Node> parse_macro(int line) {
    auto n = std::make_shared<Node>();
    n->kind = Node::Kind::kMacro;
    n->line = line;
    n->name = expect_name();
    expect_op("(");
    while (!is_op(")")) {
      std::string p = expect_name();
      ExprPtr def;
      if (is_op("=")) {
        ++i_;
        def = parse_expression();
      }
      n->params.emplace_back(p, def);
      if (!is_op(")")) expect_op(",");
    }
    ++i_;
    expect_block_end();
    std::string end;
    n->body = parse_body({"endmacro"}, end);
    expect_block_end();
    return n;
  }

  // ---- expressions (Jinja2's precedence)
  ExprPtr node(Expr::Kind k, int line) {
    auto e = std::make_shared<Expr>();
    e->kind = k;
    e->line = line;
    return e;
  }

  // a, b, c without parentheses (for loop iterables, set values) or a single expression.
  ExprPtr parse_tuple(bool with_condexpr) {
    const int line = cur().line;
    ExprPtr first = with_condexpr ? parse_expression() : parse_or();
    if (!is_op(",")) return first;
    auto t = node(Expr::Kind::kList, line);
    t->is_tuple = true;
    t->items.push_back(first);
    while (is_op(",")) {
      ++i_;
      if (cur().kind == Token::Kind::kBlockEnd || is_name("if")) break;
      t->items.push_back(with_condexpr ? parse_expression() : parse_or());
    }
    return t;
  }

  // Nesting guard: a hostile template must not overflow the stack.
  struct DepthGuard {
    Parser& p;
    explicit DepthGuard(Parser& q) : p(q) {
      if (++p.depth_ > 200) p.fail("expressions or blocks nested more than 200 deep");
    }
    ~DepthGuard() { --p.depth_; }
  };

  ExprPtr parse_expression() {
    DepthGuard guard(*this);
    ExprPtr e = parse_or();
    while (is_name("if")) {
      const int line = cur().line;
      ++i_;
      auto c = node(Expr::Kind::kCondition, line);
      c->a = parse_or();
      c->b = e;
      if (is_name("else")) {
        ++i_;
        c->c = parse_expression();
      }
      e = c;
    }
    return e;
  }
  // `a or b or c` / `a and b`: left-associative chains of one keyword.
  ExprPtr logical_chain(const char* keyword, Expr::Kind kind, ExprPtr (Parser::*next)()) {
    ExprPtr e = (this->*next)();
    while (is_name(keyword)) {
      auto o = node(kind, cur().line);
      ++i_;
      o->a = e;
      o->b = (this->*next)();
      e = o;
    }
    return e;
  }
  ExprPtr parse_or() { return logical_chain("or", Expr::Kind::kOr, &Parser::parse_and); }
  ExprPtr parse_and() { return logical_chain("and", Expr::Kind::kAnd, &Parser::parse_not); }
  ExprPtr parse_not() {
    if (is_name("not")) {
      auto o = node(Expr::Kind::kUnary, cur().line);
      ++i_;
      o->name = "not";
      o->a = parse_not();
      return o;
    }
    return parse_compare();
  }
  ExprPtr parse_compare() {
    ExprPtr e = parse_math1();
    while (true) {
      std::string op;
      const int line = cur().line;
      if (cur().kind == Token::Kind::kOp &&
          (cur().text == "==" || cur().text == "!=" || cur().text == "<" || cur().text == ">" ||
           cur().text == "<=" || cur().text == ">=")) {
        op = cur().text;
        ++i_;
      } else if (is_name("in")) {
        op = "in";
        ++i_;
      } else if (is_name("not") && peek().kind == Token::Kind::kName && peek().text == "in") {
        op = "not in";
        i_ += 2;
      } else {
        return e;
      }
      auto b = node(Expr::Kind::kBinary, line);
      b->name = op;
      b->a = e;
      b->b = parse_math1();
      e = b;
    }
  }
  ExprPtr binary_loop(ExprPtr (Parser::*next)(), std::initializer_list<const char*> ops) {
    ExprPtr e = (this->*next)();
    while (cur().kind == Token::Kind::kOp) {
      const char* hit = nullptr;
      for (const char* op : ops)
        if (cur().text == op) hit = op;
      if (!hit) break;
      auto b = node(Expr::Kind::kBinary, cur().line);
      ++i_;
      b->name = hit;
      b->a = e;
      b->b = (this->*next)();
      e = b;
    }
    return e;
  }
  ExprPtr parse_math1() { return binary_loop(&Parser::parse_concat, {"+", "-"}); }
  ExprPtr parse_concat() { return binary_loop(&Parser::parse_math2, {"~"}); }
  ExprPtr parse_math2() { return binary_loop(&Parser::parse_pow, {"*", "/", "//", "%"}); }
  ExprPtr parse_pow() { return binary_loop(&Parser::parse_unary_filtered, {"**"}); }
  ExprPtr parse_unary_filtered() { return parse_unary(true); }

  ExprPtr parse_unary(bool with_filter) {
    DepthGuard guard(*this);
    ExprPtr e;
    if (is_op("-") || is_op("+")) {
      e = node(Expr::Kind::kUnary, cur().line);
      e->name = cur().text;
      ++i_;
      e->a = parse_unary(false);
    } else {
      e = parse_primary();
    }
    e = parse_postfix(e);
    if (with_filter) e = parse_filters(e);
    return e;
  }

  ExprPtr parse_primary() {
    const Token& tk = cur();
    const int line = tk.line;
    switch (tk.kind) {
      case Token::Kind::kName: {
        ++i_;
        auto e = node(Expr::Kind::kLiteral, line);
        if (tk.text == "true" || tk.text == "True")
          e->value = Value::boolean(true);
        else if (tk.text == "false" || tk.text == "False")
          e->value = Value::boolean(false);
        else if (tk.text == "none" || tk.text == "None")
          e->value = Value::none();
        else {
          e->kind = Expr::Kind::kName;
          e->name = tk.text;
        }
        return e;
      }
      case Token::Kind::kString: {
        std::string s;
        while (cur().kind == Token::Kind::kString) s += t_[i_++].text;  // adjacent literals join
        auto e = node(Expr::Kind::kLiteral, line);
        e->value = Value::string(s);
        return e;
      }
      case Token::Kind::kInt: {
        ++i_;
        auto e = node(Expr::Kind::kLiteral, line);
        try {
          e->value = Value::integer(std::stoll(tk.text));
        } catch (const std::exception&) {
          fail(str_cat("integer literal out of range: ", tk.text));
        }
        return e;
      }
      case Token::Kind::kFloat: {
        ++i_;
        auto e = node(Expr::Kind::kLiteral, line);
        try {
          e->value = Value::real(std::stod(tk.text));
        } catch (const std::exception&) {
          fail(str_cat("float literal out of range: ", tk.text));
        }
        return e;
      }
      case Token::Kind::kOp:
        if (tk.text == "(") {
          ++i_;
          if (is_op(")")) {
            ++i_;
            auto e = node(Expr::Kind::kList, line);
            e->is_tuple = true;
            return e;
          }
          ExprPtr first = parse_expression();
          if (is_op(")")) {
            ++i_;
            return first;
          }
          auto e = node(Expr::Kind::kList, line);
          e->is_tuple = true;
          e->items.push_back(first);
          while (is_op(",")) {
            ++i_;
            if (is_op(")")) break;
            e->items.push_back(parse_expression());
          }
          expect_op(")");
          return e;
        }
        if (tk.text == "[") {
          ++i_;
          auto e = node(Expr::Kind::kList, line);
          while (!is_op("]")) {
            e->items.push_back(parse_expression());
            if (!is_op("]")) expect_op(",");
          }
          ++i_;
          return e;
        }
        if (tk.text == "{") {
          ++i_;
          auto e = node(Expr::Kind::kDict, line);
          while (!is_op("}")) {
            e->keys.push_back(parse_expression());
            expect_op(":");
            e->items.push_back(parse_expression());
            if (!is_op("}")) expect_op(",");
          }
          ++i_;
          return e;
        }
        break;
      default:
        break;
    }
    fail(str_cat("unexpected '", describe(tk), "'"));
  }

  void parse_call_args(Expr& e) {
    expect_op("(");
    while (!is_op(")")) {
      if (cur().kind == Token::Kind::kName && peek().kind == Token::Kind::kOp &&
          peek().text == "=") {
        std::string k = t_[i_].text;
        i_ += 2;
        e.kwargs.emplace_back(k, parse_expression());
      } else {
        if (!e.kwargs.empty()) fail("positional argument after keyword argument");
        e.items.push_back(parse_expression());
      }
      if (!is_op(")")) expect_op(",");
    }
    ++i_;
  }

  ExprPtr parse_postfix(ExprPtr e) {
    while (true) {
      const int line = cur().line;
      if (is_op(".")) {
        ++i_;
        if (cur().kind == Token::Kind::kInt) {
          auto it = node(Expr::Kind::kItem, line);
          it->a = e;
          it->b = node(Expr::Kind::kLiteral, line);
          try {
            it->b->value = Value::integer(std::stoll(cur().text));
          } catch (const std::exception&) {
            fail(str_cat("index out of range: ", cur().text));
          }
          ++i_;
          e = it;
          continue;
        }
        auto a = node(Expr::Kind::kAttr, line);
        a->a = e;
        a->name = expect_name();
        e = a;
      } else if (is_op("[")) {
        ++i_;
        ExprPtr parts[3];
        bool slice = false;
        for (int k = 0; k < 3; ++k) {
          if (!is_op(":") && !is_op("]")) parts[k] = parse_expression();
          if (k < 2 && is_op(":")) {
            slice = true;
            ++i_;
          } else {
            break;
          }
        }
        expect_op("]");
        if (slice) {
          auto s = node(Expr::Kind::kSlice, line);
          s->a = e;
          s->b = parts[0];
          s->c = parts[1];
          s->d = parts[2];
          e = s;
        } else {
          if (!parts[0]) fail("empty subscript");
          auto it = node(Expr::Kind::kItem, line);
          it->a = e;
          it->b = parts[0];
          e = it;
        }
      } else if (is_op("(")) {
        auto c = node(Expr::Kind::kCall, line);
        c->a = e;
        parse_call_args(*c);
        e = c;
      } else {
        return e;
      }
    }
  }

  ExprPtr parse_filters(ExprPtr e) {
    while (true) {
      const int line = cur().line;
      if (is_op("|")) {
        ++i_;
        auto f = node(Expr::Kind::kFilter, line);
        f->a = e;
        f->name = expect_name();
        while (is_op(".")) {
          ++i_;
          f->name += "." + expect_name();
        }
        if (is_op("(")) parse_call_args(*f);
        e = f;
      } else if (is_name("is")) {
        ++i_;
        auto t = node(Expr::Kind::kTest, line);
        t->a = e;
        if (is_name("not")) {
          t->negated = true;
          ++i_;
        }
        // Test names may be keywords or operators: "is none", "is true", "is ==".
        if (cur().kind == Token::Kind::kName || cur().kind == Token::Kind::kOp) {
          t->name = t_[i_++].text;
        } else {
          fail(str_cat("expected a test name after 'is', got '", describe(cur()), "'"));
        }
        if (is_op("(")) {
          parse_call_args(*t);
        } else if ((cur().kind == Token::Kind::kName || cur().kind == Token::Kind::kString ||
                    cur().kind == Token::Kind::kInt || cur().kind == Token::Kind::kFloat ||
                    is_op("[") || is_op("{")) &&
                   !is_name("else") && !is_name("or") && !is_name("and") && !is_name("if") &&
                   !is_name("in") && !is_name("not") && !is_name("is")) {
          t->items.push_back(parse_primary());  // "is divisibleby 3", "is sameas false"
        }
        e = t;
      } else {
        return e;
      }
    }
  }

  std::vector<Token> t_;
  size_t i_ = 0;
  int depth_ = 0;
  const std::string& name_;
};

}  // namespace

std::shared_ptr<Program> parse_program(const std::string& source, const std::string& name) {
  Lexer lex(source, name);
  auto tokens = lex.run();
  Parser p(std::move(tokens), name);
  auto prog = std::make_shared<Program>();
  prog->name = name;
  prog->body = p.parse_template();
  return prog;
}

}  // namespace vla::jinja::detail
