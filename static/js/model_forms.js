// Model forms: show only the chosen template's dimensions and the chosen strategy's parameters.
// Without JavaScript every group stays visible and the server uses the chosen one.
(function () {
  "use strict";

  function toggle(selector, attribute, chosen) {
    document.querySelectorAll(selector).forEach((group) => {
      group.hidden = group.getAttribute(attribute) !== chosen;
    });
  }

  const templates = document.getElementById("template-choice");
  if (templates) {
    const update = () => {
      const checked = templates.querySelector("input[type=radio]:checked");
      toggle("[data-dims-for]", "data-dims-for", checked ? checked.value : "");
    };
    templates.addEventListener("change", update);
    update();
  }

  const settings = document.getElementById("model-settings");
  if (settings) {
    const strategy = settings.querySelector("select[name=strategy]");
    const update = () => toggle("[data-params-for]", "data-params-for", strategy.value);
    strategy.addEventListener("change", update);
    update();
  }
})();
