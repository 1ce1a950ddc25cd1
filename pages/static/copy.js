/* riegel: optional copy-to-clipboard (and print) buttons. Pages work fully without it.
   Every element with a data-copy attribute gets a button after it; the
   labels come from data-copy-label / data-copy-done / data-copy-selected. */
(function () {
  "use strict";
  function selectContents(el) {
    var range = document.createRange();
    range.selectNodeContents(el);
    var sel = window.getSelection();
    sel.removeAllRanges();
    sel.addRange(range);
  }
  function attach(el) {
    var label = el.getAttribute("data-copy-label");
    if (!label) { return; }
    var button = document.createElement("button");
    button.type = "button";
    button.className = "btn btn-copy";
    button.textContent = label;
    var status = document.createElement("span");
    status.className = "copy-status";
    status.setAttribute("role", "status");
    var wrap = document.createElement("div");
    wrap.className = "copy-row";
    wrap.appendChild(button);
    wrap.appendChild(status);
    var anchor = el.parentNode.tagName === "P" ? el.parentNode : el;
    anchor.parentNode.insertBefore(wrap, anchor.nextSibling);
    var timer = null;
    function say(text) {
      status.textContent = text;
      if (timer) { clearTimeout(timer); }
      timer = setTimeout(function () { status.textContent = ""; }, 4000);
    }
    button.addEventListener("click", function () {
      var text = el.getAttribute("data-copy") || el.textContent;
      var fallback = function () {
        selectContents(el);
        say(el.getAttribute("data-copy-selected") || "");
      };
      if (navigator.clipboard && window.isSecureContext) {
        navigator.clipboard.writeText(text).then(function () {
          say(el.getAttribute("data-copy-done") || "");
        }, fallback);
      } else {
        fallback();
      }
    });
  }
  var items = document.querySelectorAll("[data-copy]");
  for (var i = 0; i < items.length; i++) { attach(items[i]); }
  // A print button beside the copy button (recovery codes).
  var printable = document.querySelectorAll("[data-print-label]");
  for (var j = 0; j < printable.length; j++) {
    var row = printable[j].nextSibling;
    if (!row || row.className !== "copy-row") { continue; }
    var print = document.createElement("button");
    print.type = "button";
    print.className = "btn btn-copy";
    print.textContent = printable[j].getAttribute("data-print-label");
    print.addEventListener("click", function () { window.print(); });
    row.insertBefore(print, row.firstChild.nextSibling);
  }
})();
