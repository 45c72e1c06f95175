// qrbridge treasury console: a little help on top of pages that work without it.
// - A form with data-confirm asks before it is sent (the server still decides everything).
// - An input with data-filter="<table id>" hides the table's rows that do not contain its text.
"use strict";
(function () {
  document.addEventListener("submit", function (event) {
    var form = event.target;
    var question = form.getAttribute("data-confirm");
    if (question && !window.confirm(question)) {
      event.preventDefault();
    }
  });

  document.querySelectorAll("input[data-filter]").forEach(function (input) {
    var table = document.getElementById(input.getAttribute("data-filter"));
    if (!table) return;
    var status = document.getElementById(input.getAttribute("aria-controls") + "-status");
    input.addEventListener("input", function () {
      var text = input.value.trim().toLowerCase();
      var shown = 0;
      table.querySelectorAll("tbody tr").forEach(function (row) {
        var match = !text || row.textContent.toLowerCase().indexOf(text) !== -1;
        row.hidden = !match;
        if (match) shown += 1;
      });
      if (status) status.textContent = shown + " shown";
    });
  });
})();
