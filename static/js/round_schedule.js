// Schedule form: show the fields that the chosen options use, and preview how many merchants
// the selection would invite if the round opened now. The server decides when it opens.
(function () {
  "use strict";
  const form = document.getElementById("schedule-round");
  if (!form) return;
  const stats = JSON.parse(document.getElementById("cohort-stats").textContent);
  const preview = document.getElementById("selection-preview");
  const value = (name) => (form.querySelector(`[name="${name}"]:checked`) || {}).value;
  const number = (name) => parseFloat(form.elements[name].value);
  const checked = (name) =>
    Array.from(form.querySelectorAll(`input[name="${name}"]:checked`)).map((box) => box.value);

  function showSections() {
    const when = value("when");
    form.querySelectorAll("[data-show-when]").forEach((section) => {
      section.hidden = !section.dataset.showWhen.split(" ").includes(when);
    });
    const participants = value("participants");
    form.querySelectorAll("[data-show-participants]").forEach((section) => {
      section.hidden = section.dataset.showParticipants !== participants;
    });
  }

  // ceil(n * fraction * (1 + over)), capped at n; the epsilon undoes binary rounding (30.000...04)
  function inviteCount(n, fraction, over) {
    if (n <= 0) return 0;
    return Math.min(n, Math.ceil(n * fraction * (1 + over) - 1e-9));
  }

  function showPreview() {
    const cohort = { category: checked("category"), region: checked("region"), size_band: checked("size_band") };
    const eligible = stats
      .filter((row) => Object.entries(cohort).every(([key, values]) => !values.length || values.includes(row[key])))
      .reduce((sum, row) => sum + row.n, 0);
    let invited = eligible;
    let how = "all of them";
    if (value("participants") === "fraction") {
      const fraction = number("fraction_percent") / 100;
      const over = (number("over_selection_percent") || 0) / 100;
      if (!(fraction > 0 && fraction <= 1)) {
        preview.textContent = "Give a fraction between 0 and 100%.";
        return;
      }
      invited = inviteCount(eligible, fraction, over);
      how = `${invited} at random`;
    }
    const quorum = parseInt(form.elements.min_updates.value, 10);
    let text = `If it opened now: ${eligible} active merchant${eligible === 1 ? "" : "s"} eligible, ${how} invited.`;
    if (quorum > invited) text += ` That is below the quorum of ${quorum}: the round would fail.`;
    preview.textContent = text;
    preview.classList.toggle("offline", quorum > invited);
  }

  form.addEventListener("change", () => { showSections(); showPreview(); });
  form.addEventListener("input", showPreview);
  showSections();
  showPreview();
})();
