"""The single run's views of its selected step: the distribution explorer (the step's
logits reshaped by the sliders, without running the model again) and the sampler-stage
inspector, and the worker jobs that feed them."""

from __future__ import annotations

from workbench.core.common.errors import WorkbenchError
from workbench.core.generation.explore import explore_distribution, next_token_logits
from workbench.core.generation.settings import SamplingSettings
from workbench.core.generation.step_inspection import TOP_N, with_texts
from workbench.ui.common.stale import mark_stale
from workbench.ui.common.worker import WorkerContext

OUTPUT_SQUEEZED = 80  # the output's height while the sampler stages fill rows below it


class StepViews:
    """The step views' part of :class:`~workbench.ui.generation.single.SingleRunView` (a
    mixin: it reads the view's run, its selected step and its controls; the view makes
    the two slots, ``explore_slot`` for the explorer's logits and ``stage_slot`` for the
    selected step's sampler stages)."""

    # --- the explorer ------------------------------------------------------------------------
    def _explore_toggled(self, on: bool) -> None:
        if on:
            self._request_logits()
        else:
            step = self._selected_record()
            if step is not None:
                self._show_recorded(step)

    def _prefix(self) -> list[int] | None:
        """Token ids before the selected step (the prompt alone when none is selected)."""
        if self.result is None:
            return None
        ids = list(self.result.prompt_token_ids)
        if self.selected_step is not None:
            ids += [s.token_id for s in self.current_steps()[: self.selected_step]]
        return ids

    def _request_logits(self) -> None:
        prefix = self._prefix()
        breakers = self.controls.settings().dry_sequence_breakers
        if prefix is None:
            settings = self.controls.settings()
            prompt, chat, max_new = self.prompt.toPlainText(), settings.chat, settings.max_new_tokens

            def job(ctx: WorkerContext):
                from workbench.core.generation.generate import prepare_prompt

                loaded = ctx.model()
                ids = prepare_prompt(loaded, prompt, chat, max_new)[0][0].tolist()
                return ids, *with_texts(loaded, next_token_logits(loaded, ids), breakers)
        else:
            def job(ctx: WorkerContext):
                loaded = ctx.model()
                return prefix, *with_texts(loaded, next_token_logits(loaded, prefix), breakers)

        self.explore_slot.start(
            "Next-token distribution", job, finished=self._explore_done,
            failed=lambda error, details: self._explore_ended(f"Failed: {error}"),
            cancelled=lambda: self._explore_ended("Cancelled."))

    def settings_changed(self) -> None:
        if self.explore.isChecked() and self.explore_logits is not None:
            self.redraw_explorer()

    def redraw_explorer(self) -> None:
        if self.candidate_chart is None or self.explore_logits is None:
            return
        settings = self.controls.settings()
        try:
            dist = explore_distribution(
                self.explore_logits, settings, TOP_N, self.explore_prefix,
                breaker_ids=self.explore_breakers.get(settings.dry_sequence_breakers))
        except Exception as exc:  # a value mid-edit, e.g. top-p at its limit
            self.candidate_chart.plot.setTitle(f"Cannot apply these settings: {exc}", size="9pt")
            return
        # the top candidates by raw probability, decoded on the worker: its tokenizer is
        # not for this thread (a fast tokenizer used by two threads says "Already borrowed")
        texts = [self.explore_texts.get(t, str(t)) for t in dist.token_ids]
        where = "after the prompt" if self.selected_step is None else f"at step {self.selected_step}"
        title = (f"Explorer {where}: {settings.describe()}<br>kept {dist.kept_count} tokens, "
                 f"{dist.kept_mass:.1%} of the mass, entropy {dist.entropy:.2f} bits")
        self.candidate_chart.show_candidates(title, texts, dist.raw, dist.processed, dist.kept,
                                             None)

    def _explore_done(self, result: object) -> None:
        (self.explore_prefix, self.explore_logits, self.explore_texts,  # type: ignore[misc]
         self.explore_breakers) = result
        if self.explore.isChecked():
            self.redraw_explorer()

    def _explore_ended(self, message: str) -> None:
        """The explorer's logits did not come: the ones it holds are of another prefix by
        now, so they go, and the chart shows the selected step as generated, or nothing."""
        self.explore_logits, self.explore_texts, self.explore_prefix = None, {}, []
        self.explore_breakers = {}
        self.explore.blockSignals(True)
        self.explore.setChecked(False)
        self.explore.blockSignals(False)
        if self.candidate_chart is not None:
            self.candidate_chart.show_candidates(f"Explorer: {message}", [], [], [], [], None)
        step = self._selected_record()
        if step is not None:
            self._show_recorded(step)

    # --- the sampler-stage inspector ----------------------------------------------------------
    def _sync_stages_button(self) -> None:
        """On while a generated token is selected and no generation runs; a button that is
        down can always be raised again."""
        self.stages_button.setEnabled(self.stages_button.isChecked() or (
            self.result is not None and not self.run_slot.running
            and self._selected_record() is not None))

    def _stages_toggled(self, on: bool) -> None:
        self.lower_stack.setCurrentIndex(1 if on else 0)
        if on:
            self.request_stages()
        self._sync_stages_button()

    def _stages_stale(self) -> None:
        """The run or the sequence shown changed: the stages shown are of another one."""
        self.stage_request += 1  # an answer still on its way is of the old run
        self.stage_slot.drop()
        inspector = self.stage_inspector
        if inspector is not None and inspector.inspection is not None and inspector.isEnabled():
            inspector.header.setText(mark_stale(
                inspector, f"Step {inspector.inspection.step} of an earlier sequence: click "
                "a token to see its stages."))
        self._sync_stages_button()

    def _stage_settings(self) -> tuple[SamplingSettings, str, int, list[str]]:
        """The settings the selected step was generated with (the run's recorded ones, else
        the controls' current ones), in words, the sequence's row, and notes."""
        shown = max(self.sequence_picker.currentIndex(), 0)
        assert self.result is not None and self.selected_step is not None
        sequences, notes, row = len(self.result.sequences), [], shown
        if shown >= sequences:  # a branch: its steps before the branch point are its parent's
            b = self.branches[shown - sequences]
            row = b.parent
            if self.selected_step == b.step:
                notes.append("this token was picked for the branch, not sampled.")
            if self.selected_step > b.step:
                return (self.controls.settings(), "the controls' current settings: a branch's "
                        "are not recorded", 0, notes)
        try:
            recorded = SamplingSettings(**self.result.settings)
            recorded.validate()
        except (TypeError, WorkbenchError):  # a run that kept none (or other ones)
            return self.controls.settings(), "the controls' current settings", row, notes
        return recorded, "the run's settings", row, notes

    def request_stages(self) -> None:
        """Compute the selected step's sampler stages on the worker and show them."""
        if self.stage_inspector is None:
            return
        step = self._selected_record()
        if self.result is None or step is None or self.run_slot.running:
            self._stages_stale()
            if self.stage_inspector.inspection is None:
                self.stage_inspector.show_message(self.stage_inspector.HINT)
            return
        self.stage_slot.cancel()  # the new job takes its place in the slot
        self.stage_request += 1
        request = self.stage_request
        prefix = self._prefix() or []
        settings, source, row, notes = self._stage_settings()
        chosen, index = step.token_id, step.index

        def job(ctx: WorkerContext):
            from workbench.core.generation.step_inspection import inspect_step

            return inspect_step(ctx.model(), prefix, chosen, index, settings, source, row,
                                notes)

        self.stage_inspector.setEnabled(True)
        if self.stage_inspector.inspection is None:
            self.stage_inspector.show_message(f"Computing the sampler stages of step {index}…")
        else:
            self.stage_inspector.header.setText(f"Computing the sampler stages of step {index}…")
        self.stage_slot.start(
            "Sampler stages", job,
            finished=lambda result: self._stages_done(request, result),
            failed=lambda error, details: self._stages_ended(request, f"Failed: {error}"),
            cancelled=lambda: self._stages_ended(request, "Cancelled."))

    def _stages_done(self, request: int, result: object) -> None:
        from workbench.core.generation.step_inspection import StageInspection

        if request != self.stage_request or self.stage_inspector is None:
            return  # an earlier request's answer
        if isinstance(result, StageInspection):
            self.stage_inspector.setEnabled(True)
            self.stage_inspector.show_inspection(result)
            above, below = self.results_view.sizes()
            if self.stage_inspector.row_count() > 1 and above > OUTPUT_SQUEEZED:
                # charts in rows need the height: the output keeps a few lines to click in
                self.results_view.setSizes([OUTPUT_SQUEEZED, above + below - OUTPUT_SQUEEZED])

    def _stages_ended(self, request: int, message: str) -> None:
        if request != self.stage_request or self.stage_inspector is None:
            return
        self.stage_inspector.show_message(f"Sampler stages: {message}")
