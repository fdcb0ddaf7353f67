from django.urls import path

from clients import views

app_name = "clients"
urlpatterns = [
    path("", views.merchant_list, name="merchant-list"),
    path("new/", views.merchant_create, name="merchant-create"),
    path("<slug:slug>/", views.merchant_detail, name="merchant-detail"),
    path("<slug:slug>/status/", views.merchant_status, name="merchant-status"),
    path("<slug:slug>/tokens/", views.token_issue, name="token-issue"),
    path("<slug:slug>/tokens/<int:token_id>/revoke/", views.token_revoke, name="token-revoke"),
]
