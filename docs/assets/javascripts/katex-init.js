// Typesets the math that pymdownx.arithmatex (generic mode) leaves in the page:
// <span class="arithmatex">\( ... \)</span> inline and <div class="arithmatex">\[ ... \]</div>
// display math, with the KaTeX copy vendored in docs/assets/katex (no network needed).
// A formula KaTeX cannot parse stays as text and is reported with console.error.
(function () {
  "use strict";

  var DELIMITERS = [
    ["\\(", "\\)", false],
    ["\\[", "\\]", true],
    ["$$", "$$", true],
    ["$", "$", false],
  ];

  function split(text) {
    var source = text.trim();
    for (var i = 0; i < DELIMITERS.length; i++) {
      var open = DELIMITERS[i][0];
      var close = DELIMITERS[i][1];
      if (source.length >= open.length + close.length && source.startsWith(open) && source.endsWith(close)) {
        return { tex: source.slice(open.length, source.length - close.length), display: DELIMITERS[i][2] };
      }
    }
    return null;
  }

  function render(root) {
    var nodes = (root || document).querySelectorAll(".arithmatex");
    for (var i = 0; i < nodes.length; i++) {
      var el = nodes[i];
      if (el.querySelector(".katex")) {
        continue; // already typeset (instant navigation may hand back a rendered page)
      }
      var math = split(el.textContent);
      if (math === null) {
        console.error("katex-init: no math delimiters in " + JSON.stringify(el.textContent));
        continue;
      }
      try {
        katex.render(math.tex, el, { displayMode: math.display || el.tagName === "DIV", throwOnError: true });
      } catch (err) {
        console.error("katex-init: " + err.message + " in " + JSON.stringify(math.tex));
      }
    }
  }

  if (typeof document$ !== "undefined" && typeof document$.subscribe === "function") {
    // mkdocs-material emits document$ on the first load and after every instant navigation.
    document$.subscribe(function () {
      render(document);
    });
  } else if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", function () {
      render(document);
    });
  } else {
    render(document);
  }
})();
