/* riegel: the login page's "Sie können nicht auf Ihr Konto zugreifen?"
   link carries the name typed so far to the forgot-password form (as the
   customer guide says: type the name, then click the link). Without this
   script the link still works; the form is then empty. */
(function () {
  "use strict";
  var link = document.getElementById("forgot-link");
  var field = document.getElementById("username");
  if (!link || !field) { return; }
  var base = link.getAttribute("href");
  function update() {
    var v = field.value.trim();
    link.setAttribute("href", v ? base + "?username=" + encodeURIComponent(v) : base);
  }
  field.addEventListener("input", update);
  link.addEventListener("click", update);
  update();
})();
