// huabi console: the charts on the usage page and small conveniences. Everything works without it where a form
// suffices.
(function () {
  "use strict";
  function charts() {
    var data = document.getElementById("chart-data");
    if (!data || !window.Chart) { return; }
    var d = JSON.parse(data.textContent);
    var colors = { requests: "#8c6d3f", painted: "#c0392b" };
    function bar(id, labels, requests, painted) {
      var el = document.getElementById(id);
      if (!el) { return; }
      new window.Chart(el, {
        type: "bar",
        data: {
          labels: labels,
          datasets: [
            { label: "请求 requests", data: requests, backgroundColor: colors.requests },
            { label: "画好 painted", data: painted, backgroundColor: colors.painted }
          ]
        },
        options: { responsive: true, animation: false, scales: { y: { beginAtZero: true, ticks: { precision: 0 } } } }
      });
    }
    bar("days", d.days, d.requests, d.painted);
    bar("hours", d.hours.map(function (h) { return h + ":00"; }), d.hour_requests, d.hour_painted);
    document.body.setAttribute("data-charts", "drawn");
  }
  function previewSubject() {
    var subject = document.getElementById("subject");
    var hidden = document.getElementById("preview-subject");
    if (!subject || !hidden) { return; }
    subject.addEventListener("input", function () { hidden.value = subject.value; });
  }
  function ready() {
    // Chart.js loads after this file (both deferred, in document order); wait for it.
    if (document.getElementById("chart-data") && !window.Chart) {
      window.addEventListener("load", charts);
    } else {
      charts();
    }
    previewSubject();
  }
  if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", ready);
  } else {
    ready();
  }
})();
