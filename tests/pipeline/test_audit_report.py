"""The audit's section in the run's report.md: added once, replaced by a later audit."""

from fedge.pipeline.audit.report import AUDIT_HEADING, add_to_report


def test_audit_section_is_added_then_replaced_and_other_sections_survive(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "report.md").write_text("# fedge run\n\n## Privacy\n\nepsilon 3\n")
    for n, name in enumerate(("first", "second")):
        audit_dir = run / "audit" / name
        audit_dir.mkdir(parents=True)
        (audit_dir / "audit.md").write_text(f"{AUDIT_HEADING}\n\nteacher TPR {n}\n")
        add_to_report(run, audit_dir)
    report = (run / "report.md").read_text()
    assert report.count(AUDIT_HEADING) == 1
    assert "teacher TPR 1" in report and "teacher TPR 0" not in report
    assert "Files: `audit/second/`" in report
    assert report.startswith("# fedge run\n\n## Privacy\n\nepsilon 3\n")
