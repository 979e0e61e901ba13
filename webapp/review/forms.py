from django import forms

from annotations.tirads import Composition, EchogenicFoci, Echogenicity, Margin, Shape
from webapp.review.models import Call, Design


class StudyForm(forms.Form):
    """Shape only; the rules (ready videos with a known label, enough cases of each class,
    at least two readers) are the service's."""

    name = forms.CharField(max_length=200)
    description = forms.CharField(widget=forms.Textarea(attrs={"rows": 2}), required=False)
    design = forms.ChoiceField(choices=Design.choices)
    washout_days = forms.IntegerField(min_value=0, initial=28, required=False,
                                      help_text="Days between the unaided and aided sessions "
                                                "(washout design; 4 weeks is usual).")
    seed = forms.IntegerField(min_value=0, initial=0)
    videos = forms.MultipleChoiceField(widget=forms.CheckboxSelectMultiple)
    juniors = forms.MultipleChoiceField(widget=forms.CheckboxSelectMultiple, required=False)
    seniors = forms.MultipleChoiceField(widget=forms.CheckboxSelectMultiple, required=False)

    def __init__(self, *args, video_choices, user_choices, **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["videos"].choices = video_choices
        self.fields["juniors"].choices = user_choices
        self.fields["seniors"].choices = user_choices


class ReadForm(forms.Form):
    likelihood = forms.IntegerField(min_value=0, max_value=100,
                                    label="Likelihood of malignancy (0-100)")
    call = forms.ChoiceField(choices=Call.choices, widget=forms.RadioSelect)
    tirads_level = forms.TypedChoiceField(
        choices=[("", "Score from the features below")] + [(i, f"TR{i}") for i in range(1, 6)],
        coerce=int, empty_value=None, required=False, label="TI-RADS level")
    composition = forms.ChoiceField(choices=[("", "-")] + Composition.choices, required=False)
    echogenicity = forms.ChoiceField(choices=[("", "-")] + Echogenicity.choices, required=False)
    shape = forms.ChoiceField(choices=[("", "-")] + Shape.choices, required=False)
    margin = forms.ChoiceField(choices=[("", "-")] + Margin.choices, required=False)
    echogenic_foci = forms.MultipleChoiceField(choices=EchogenicFoci.choices, required=False,
                                               widget=forms.CheckboxSelectMultiple)

    def features(self) -> dict | None:
        keys = ("composition", "echogenicity", "shape", "margin")
        data = {k: self.cleaned_data[k] for k in keys}
        if not any(data.values()) and not self.cleaned_data["echogenic_foci"]:
            return None
        return {**data, "echogenic_foci": self.cleaned_data["echogenic_foci"]}
