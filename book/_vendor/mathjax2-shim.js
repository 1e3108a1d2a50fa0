// dlbook's own shim (not vendored code).
// The ipywidgets HTML manager typesets widget labels through MathJax 2's API,
// MathJax.Hub.Queue(["Typeset", MathJax.Hub, element]). The site serves MathJax 3,
// which has no Hub, so every widget raised "Cannot read properties of undefined
// (reading 'Queue')". This maps that one call onto MathJax 3's typesetPromise,
// holding requests that arrive before MathJax 3 has finished loading.
(function () {
  var config = (window.MathJax = window.MathJax || {});
  var waiting = [];

  function typeset(elements) {
    var mj = window.MathJax;
    if (mj && typeof mj.typesetPromise === "function") {
      mj.typesetPromise(elements).catch(function (err) { console.warn("MathJax typeset:", err); });
    } else {
      waiting.push(elements);
    }
  }

  var hub = {
    Queue: function () {
      for (var i = 0; i < arguments.length; i++) {
        var job = arguments[i];
        if (Array.isArray(job) && job[0] === "Typeset") typeset(job[2] ? [job[2]] : undefined);
      }
    },
  };

  config.Hub = hub;
  config.startup = config.startup || {};
  config.startup.ready = function () {
    window.MathJax.startup.defaultReady();
    window.MathJax.Hub = hub;
    window.MathJax.startup.promise.then(function () { waiting.splice(0).forEach(typeset); });
  };
})();
